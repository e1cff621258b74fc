"""Transformer² singular-value fine-tuning (SVF) linears.

A trained dense weight W is stored as its SVD, W = U diag(σ) Vᵀ, and run as W' = U diag(σ ⊙ z) Vᵀ
where z is one slice of the graph input `svf_z`. An expert is just a z vector, so adding one never
needs a re-export, and z = 1 reproduces the dense layer exactly.

The base model trains dense (`weight` parameter); `convert_to_svf(model)` swaps every SVFLinear to
its U, σ, V buffers before export or expert training (full rank, or truncated to `rank` with the
relative Frobenius error ‖W − W_r‖ / ‖W‖ = sqrt(Σ_{i>r} σ_i²) / sqrt(Σ σ_i²) reported per layer).
`SVFLinear.from_linear` converts any trained `nn.Linear` the same way. `svf_layout(model)` says
which slice of `svf_z` belongs to which layer: expert files store z per layer by these names.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SVFLinear(nn.Module):
    """y = x Wᵀ with W dense (training) or U diag(σ ⊙ z[offset:offset+rank]) Vᵀ (after conversion)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, init: str = "normal"):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        if init == "linear":  # exactly nn.Linear's init (same draws): a layer made SVF keeps its seeded init
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        else:
            nn.init.normal_(self.weight, std=in_features**-0.5)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.offset = 0  # position of this layer's slice in svf_z, assigned by assign_svf_offsets
        self.svf_name = ""  # its name in the model (svf_layout), assigned there too
        self.rank = min(in_features, out_features)
        self.is_svf = False

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int | None = None) -> tuple[SVFLinear, float]:
        """Any trained dense nn.Linear -> an SVFLinear in SVF form (bias kept as is), with the
        truncation error of `rank` (0 for full rank)."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        layer.to(linear.weight.device)
        return layer, layer.to_svf(rank)

    def to_svf(self, rank: int | None = None) -> float:
        """Replace the dense weight by its (optionally truncated) SVD; returns the relative Frobenius
        error of the truncation (0 for full rank)."""
        if self.is_svf:
            raise RuntimeError("layer is already in SVF form")
        w = self.weight.detach().double()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        r = s.numel() if rank is None else max(1, min(rank, s.numel()))
        err = float(s[r:].square().sum().sqrt() / s.square().sum().sqrt()) if r < s.numel() else 0.0
        dtype = self.weight.dtype
        del self.weight
        self.register_buffer("U", u[:, :r].to(dtype).contiguous())
        self.register_buffer("S", s[:r].to(dtype).contiguous())
        self.register_buffer("V", vh[:r].T.to(dtype).contiguous())
        self.rank, self.is_svf = r, True
        return err

    def dense_weight(self, z: torch.Tensor | None = None) -> torch.Tensor:
        if not self.is_svf:
            return self.weight
        s = self.S if z is None else self.S * z[self.offset : self.offset + self.rank]
        return (self.U * s) @ self.V.T

    def forward(self, x: torch.Tensor, z: torch.Tensor | dict | None = None) -> torch.Tensor:
        if isinstance(z, dict):  # the decode graphs: dense weights built once per z, by layer name
            return torch.nn.functional.linear(x, z[self.svf_name], self.bias)  # (model/graphs.py DecodeSvfGraph)
        if not self.is_svf:
            y = x @ self.weight.T
        else:
            s = self.S if z is None else self.S * z[self.offset : self.offset + self.rank]
            # Two thin matmuls instead of rebuilding W: (x V) scaled by σ ⊙ z, then times Uᵀ.
            y = ((x @ self.V) * s) @ self.U.T
        return y if self.bias is None else y + self.bias


def svf_layers(model: nn.Module) -> list[tuple[str, SVFLinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SVFLinear)]


def assign_svf_offsets(model: nn.Module) -> int:
    """Lay out every SVF layer's z slice in one vector (module order); returns its total length."""
    offset = 0
    for name, layer in svf_layers(model):
        layer.offset, layer.svf_name = offset, name
        offset += layer.rank
    return offset


def svf_layout(model: nn.Module) -> list[tuple[str, int, int]]:
    """(layer name, offset in svf_z, rank) of every SVF layer, in svf_z order."""
    return [(name, layer.offset, layer.rank) for name, layer in svf_layers(model)]


def convert_to_svf(model: nn.Module, rank: int | None = None,
                   ranks: dict[str, int] | None = None) -> dict[str, float]:
    """Convert all SVFLinear layers of `model` to SVF form (rank for every layer, or `ranks` per
    layer name, e.g. read back from a truncated checkpoint); returns the truncation error per layer."""
    errors = {name: layer.to_svf((ranks or {}).get(name, rank))
              for name, layer in svf_layers(model) if not layer.is_svf}
    assign_svf_offsets(model)
    return errors
