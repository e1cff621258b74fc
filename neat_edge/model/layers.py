"""Shared transformer pieces: RMSNorm, rotary positions, masked attention, MLP.

Attention is written with explicit matmuls and a boolean mask so the exported graph is plain
MatMul/Softmax/Where with static rank; every query row must keep at least one allowed key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neat_edge.model.svf import SVFLinear

NEG_INF = -1e9  # finite: a fully masked row must never produce NaN in any runtime


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not tracing():  # eager PyTorch: its one fused kernel (a decode step runs ten norms on one row)
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        # exported: x / sqrt(mean(x²) + eps), the form ONNX Runtime fuses into one SimplifiedLayerNormalization
        # kernel (seven nodes otherwise), and that TensorRT and Core ML read as plain ops
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def tracing() -> bool:
    """Is this code being traced for an exported graph (torch.export, torch.onnx) or compiled? TorchScript
    tracing counts too: Optimum's export() runs torch.onnx's TorchScript exporter, which has no aten::rms_norm."""
    compiler = torch.compiler
    return (compiler.is_compiling() or (hasattr(compiler, "is_exporting") and compiler.is_exporting())
            or torch.jit.is_tracing())


def rotary_freqs(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    half = head_dim // 2
    return base ** (-torch.arange(half, dtype=torch.float32) / half)


def rotary(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding on [B, H, T, Dh] with positions [T], or [B, T] per stream (float);
    freqs [Dh/2] (rotary_freqs, a buffer of the attention module: computed once, not per step).
    [x1 ‖ x2] -> [x1 cos − x2 sin ‖ x2 cos + x1 sin], as x ⊙ [cos ‖ cos] + [−x2 ‖ x1] ⊙ [sin ‖ sin]."""
    half = x.shape[-1] // 2
    angles = positions[..., None] * freqs.to(x.dtype)  # [T, half] or [B, T, half]
    if angles.dim() == 3:
        angles = angles.unsqueeze(1)  # per-stream positions: broadcast over heads
    angles = torch.cat([angles, angles], dim=-1)
    return x * angles.cos() + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * angles.sin()


def masked_attention(q, k, v, mask):
    """q [B,H,Tq,Dh], k/v [B,H,Tk,Dh], mask bool broadcastable to [B,H,Tq,Tk] (True = may attend)."""
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    scores = torch.where(mask, scores, torch.full_like(scores, NEG_INF))
    return scores.softmax(-1) @ v


def write_slot(cache: torch.Tensor, rows: torch.Tensor, slot: torch.Tensor, axis: int, enable=None) -> torch.Tensor:
    """A fixed-size cache with one row written per stream, without in-place ops (incremental decoding):
    cache [B, ..., T, ...] (time on `axis`), rows of size 1 on that axis, slot [B] int64. enable [B] bool
    (optional) leaves the streams where it is False unchanged. A Where over a one-hot: no ScatterND,
    no data-dependent shapes, the same graph for ONNX, TensorRT and Core ML."""
    hit = torch.arange(cache.shape[axis], device=cache.device) == slot[:, None]  # [B, T]
    if enable is not None:
        hit = hit & enable[:, None]
    shape = [hit.shape[0]] + [1] * (cache.dim() - 1)
    shape[axis] = cache.shape[axis]
    return torch.where(hit.reshape(shape), rows, cache)


def _linear(svf: bool, svf_init: str):
    if svf:
        return lambda i, o: SVFLinear(i, o, init=svf_init)
    return lambda i, o: nn.Linear(i, o, bias=False)


class Attention(nn.Module):
    """Multi-head attention; `svf=True` makes its projections SVF linears (latent layers; local layers
    with svf_scope "all", initialised like nn.Linear: svf_init="linear")."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None, svf: bool = False, svf_init: str = "normal"):
        super().__init__()
        kv_dim = kv_dim or dim
        lin = _linear(svf, svf_init)
        self.heads, self.svf = heads, svf
        self.q, self.k, self.v, self.o = lin(dim, dim), lin(kv_dim, dim), lin(kv_dim, dim), lin(dim, dim)
        self.register_buffer("rotary_freqs", rotary_freqs(dim // heads), persistent=False)

    def _proj(self, layer, x, z):
        return layer(x, z) if self.svf else layer(x)

    def _split(self, x):
        b, t, d = x.shape
        if isinstance(t, int) and t == 1:  # one position (a decode step): the same layout, no transpose
            return x.reshape(b, self.heads, 1, d // self.heads)
        return x.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)

    # The three pieces are what both the whole-segment forward and the incremental (cached) forms run.
    def queries(self, x, z=None, pos=None):
        """x [B,T,dim] -> q [B,H,T,Dh], rotated to positions pos ([T] or [B,T]) when given."""
        q = self._split(self._proj(self.q, x, z))
        return q if pos is None else rotary(q, pos, self.rotary_freqs)

    def keys_values(self, kv, z=None, pos=None):
        """kv [B,T,kv_dim] -> k, v [B,H,T,Dh]; k rotated to positions pos when given."""
        k, v = self._split(self._proj(self.k, kv, z)), self._split(self._proj(self.v, kv, z))
        return (k if pos is None else rotary(k, pos, self.rotary_freqs)), v

    def combine(self, q, k, v, mask, z=None):
        """Masked attention of q over k/v, heads merged, output projection: [B,T,dim]."""
        out = masked_attention(q, k, v, mask)
        if isinstance(out.shape[2], int) and out.shape[2] == 1:  # one position: heads merge by a reshape
            return self._proj(self.o, out.reshape(out.shape[0], 1, -1), z)
        out = out.transpose(1, 2)
        return self._proj(self.o, out.reshape(out.shape[0], out.shape[1], -1), z)

    def forward(self, x, kv, mask, z=None, q_pos=None, k_pos=None):
        k, v = self.keys_values(kv, z, k_pos)
        return self.combine(self.queries(x, z, q_pos), k, v, mask, z)


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: int, svf: bool = False, svf_init: str = "normal"):
        super().__init__()
        lin = _linear(svf, svf_init)
        self.svf = svf
        self.up, self.down = lin(dim, dim * ratio), lin(dim * ratio, dim)

    def forward(self, x, z=None):
        if self.svf:
            return self.down(F.gelu(self.up(x, z)), z)
        return self.down(F.gelu(self.up(x)))
