"""Transformer² singular-value fine-tuning (SVF) linears.

A trained dense weight W is stored as its SVD, W = U diag(σ) Vᵀ, and run as W' = U diag(σ ⊙ z) Vᵀ
where z is one slice of the graph input `svf_z`. An expert is just a z vector, so adding one never
needs a re-export, and z = 1 reproduces the dense layer exactly.

The base model trains dense (`weight` parameter); `convert_to_svf(model)` swaps every SVFLinear to
its U, σ, V buffers before export or expert training.
"""

from __future__ import annotations

import torch
from torch import nn


class SVFLinear(nn.Module):
    """y = x Wᵀ with W dense (training) or U diag(σ ⊙ z[offset:offset+rank]) Vᵀ (after conversion)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.normal_(self.weight, std=in_features**-0.5)
        self.offset = 0  # position of this layer's slice in svf_z, assigned by assign_svf_offsets
        self.rank = min(in_features, out_features)
        self.is_svf = False

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

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        if not self.is_svf:
            return x @ self.weight.T
        s = self.S if z is None else self.S * z[self.offset : self.offset + self.rank]
        # Two thin matmuls instead of rebuilding W: (x V) scaled by σ ⊙ z, then times Uᵀ.
        return ((x @ self.V) * s) @ self.U.T


def svf_layers(model: nn.Module) -> list[tuple[str, SVFLinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SVFLinear)]


def assign_svf_offsets(model: nn.Module) -> int:
    """Lay out every SVF layer's z slice in one vector (module order); returns its total length."""
    offset = 0
    for _, layer in svf_layers(model):
        layer.offset = offset
        offset += layer.rank
    return offset


def convert_to_svf(model: nn.Module, rank: int | None = None) -> dict[str, float]:
    """Convert all SVFLinear layers of `model` to SVF form; returns the truncation error per layer."""
    errors = {name: layer.to_svf(rank) for name, layer in svf_layers(model) if not layer.is_svf}
    assign_svf_offsets(model)
    return errors
