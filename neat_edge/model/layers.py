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
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps) * self.weight


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding on [B, H, T, Dh] with positions [T] (float)."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, dtype=x.dtype, device=x.device) / half)
    angles = positions[:, None] * freqs[None, :]
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def masked_attention(q, k, v, mask):
    """q [B,H,Tq,Dh], k/v [B,H,Tk,Dh], mask bool broadcastable to [B,H,Tq,Tk] (True = may attend)."""
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    scores = torch.where(mask, scores, torch.full_like(scores, NEG_INF))
    return scores.softmax(-1) @ v


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

    def _proj(self, layer, x, z):
        return layer(x, z) if self.svf else layer(x)

    def _split(self, x):
        b, t, d = x.shape
        return x.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x, kv, mask, z=None, q_pos=None, k_pos=None):
        q, k, v = (self._split(self._proj(m, t, z)) for m, t in ((self.q, x), (self.k, kv), (self.v, kv)))
        if q_pos is not None:
            q, k = rotary(q, q_pos), rotary(k, k_pos)
        out = masked_attention(q, k, v, mask).transpose(1, 2).reshape(x.shape)
        return self._proj(self.o, out, z)


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
