"""The exact chunk-parallel gated delta rule: NeuralMemory's `memory_rule="delta"` write (model/titans.py).

For a linear memory (depth 1, M(k) = W k) without momentum, Titans' update taken token by token is a
delta rule (seed 004 §1.6, Eq 32-34: Eq 33 with η_t = 0 is Gated DeltaNet's Eq 34). We use Gated
DeltaNet's form (Yang, Kautz, Hatamizadeh, ICLR 2025), forgetting first, then the delta step on the
forgotten memory:

    W_t = g_t W_{t-1} + β_t (v_t − g_t W_{t-1} k_t) k_tᵀ,      g_t = 1 − α_t,  β_t ∈ (0, 1],  ‖k_t‖ = 1

so that W_t k_t = (1 − β_t) g_t W_{t-1} k_t + β_t v_t: β_t = 1 overwrites the association exactly. (With
α_t = 0 this is Eq 32-33 at chunk size 1, η = 0, θ_t = β_t / 2: the gradient of Eq 12's ‖W k − v‖² is
2 (W k − v) kᵀ. For α_t > 0 the two differ by O(α_t β_t): Titans takes the gradient at W_{t-1}.)

Unlike Eq 16-18, where every token of a chunk takes its gradient at the chunk start, here every token
sees the memory the tokens before it left, yet the chunk is computed in parallel (DeltaNet, Yang et al.
2024; fla-org's `naive_chunk_gated_delta_rule`). Write W_t = g_t W_{t-1} + u_t k_tᵀ and unroll from the
chunk start W_0 with γ_t = Σ_{j≤t} log g_j:

    u_t = β_t v_t − β_t e^{γ_t} W_0 k_t − Σ_{j<t} β_t e^{γ_t − γ_j} (k_tᵀ k_j) u_j
    (I + A) U = diag(β) V − diag(β) (K ⊙ e^γ) W_0ᵀ,    A_tj = β_t e^{γ_t − γ_j} k_tᵀ k_j  (j < t)
    T = (I + A)⁻¹,   U = T diag(β) V − T diag(β) (K ⊙ e^γ) W_0ᵀ
    W_C = e^{γ_C} W_0 + (U ⊙ e^{γ_C − γ})ᵀ K

T is the inverse of a unit lower-triangular matrix, formed by matmuls only: the chunk is padded to a
power of two P and T is built by blockwise doubling (the inverse of 2s×2s diagonal blocks from those of
s×s blocks, log2 P fixed steps; see unit_lower_inverse). The nilpotent series (I − A)(I + A²)(I + A⁴)… gives the same T in
exact arithmetic but sums powers of A whose entries grow like binomial coefficients for correlated keys
and cancel to O(1): in fp32 that loses every digit. Doubling only ever holds entries of T itself.
Masked (padding) tokens get β = 0 and g = 1: the identity step, skipped exactly.
"""

from __future__ import annotations

import math

import torch


def padded_length(tokens: int) -> int:
    """The power of two the chunk is padded to (at least 1)."""
    return 1 << max(0, math.ceil(math.log2(max(tokens, 1))))


def pad_tokens(x: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """x padded with zeros (masked tokens) to `length` along dim. Written as concatenate-then-slice rather
    than F.pad(length − size): under torch.export a dynamic size stays free of a `size <= length` guard,
    which would contradict the graph's declared axis range (the caller guarantees size <= length)."""
    zeros = x.new_zeros(*x.shape[:dim % x.dim()], length, *x.shape[dim % x.dim() + 1 :])
    return torch.cat([x, zeros], dim=dim).narrow(dim, 0, length)


def unit_lower_inverse(a: torch.Tensor) -> torch.Tensor:
    """(I + A)⁻¹ for A [..., P, P] strictly lower triangular, P a power of two, by matmuls only.

    Blockwise doubling: with D_s⁻¹ the inverses of the s×s diagonal blocks of L = I + A (D_1 = I), the
    inverse of each 2s×2s diagonal block [[L11, 0], [L21, L22]] is [[L11⁻¹, 0], [−L22⁻¹ L21 L11⁻¹, L22⁻¹]];
    after log2 P steps the one block is L. Each step is a batched product of the blocks only (P·s² per
    step, P³/3 in all), and every intermediate is a diagonal block of L⁻¹ (for a triangular matrix the
    inverse of a diagonal block is that block of the inverse), so nothing grows beyond the result's
    entries. Block extraction is reshapes, slices and a masked sum: no Loop, Gather or Trilu in the graph."""
    p = a.shape[-1]
    lead = a.shape[:-2]
    inv = torch.ones(*lead, p, 1, 1, dtype=a.dtype, device=a.device)  # [.., P/s, s, s]: the blocks of D_s⁻¹
    s = 1
    while s < p:  # log2(P) steps: P is a Python int fixed at trace time (no data-dependent control flow)
        n = p // (2 * s)
        quarters = a.reshape(*lead, n, 2, s, n, 2, s)[..., :, 1, :, :, 0, :]  # [.., n, s, n, s]
        same_pair = torch.eye(n, dtype=a.dtype, device=a.device)[:, None, :, None]
        l21 = (quarters * same_pair).sum(-2)  # [.., n, s, s]: L21 of each 2s block
        pairs = inv.reshape(*lead, n, 2, s, s)
        inv11, inv22 = pairs[..., 0, :, :], pairs[..., 1, :, :]
        top = torch.cat([inv11, torch.zeros_like(inv11)], dim=-1)
        bottom = torch.cat([-(inv22 @ l21 @ inv11), inv22], dim=-1)
        inv = torch.cat([top, bottom], dim=-2)
        s *= 2
    return inv.reshape(*lead, p, p)


def delta_chunk(w0: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_g: torch.Tensor,
                beta: torch.Tensor, capacity: int) -> torch.Tensor:
    """The memory after one chunk of the gated delta rule, exactly.

    w0 [B,H,d_out,d_in]; k [B,H,C,d_in] (ℓ2-normalised), v [B,H,C,d_out]; log_g = log(1 − α) ≤ 0 and
    beta [B,H,C], both already zero on masked tokens. capacity: a static bound on C (the chunk length
    may be a dynamic axis under export); the chunk is padded to padded_length(capacity) tokens."""
    size = padded_length(capacity)
    k, v = (pad_tokens(x, size, 2) for x in (k, v))
    log_g, beta = (pad_tokens(x, size, -1) for x in (log_g, beta))
    gamma = torch.cumsum(log_g, dim=-1)  # γ_t: decay from the chunk start through token t
    strict = torch.ones(size, size, dtype=torch.bool, device=k.device).tril(-1)
    decay = gamma.unsqueeze(-1) - gamma.unsqueeze(-2)  # γ_t − γ_j ≤ 0 where j < t
    decay = torch.exp(torch.where(strict, decay, torch.full_like(decay, -math.inf)))
    a = beta.unsqueeze(-1) * decay * (k @ k.transpose(-1, -2))  # A_tj = β_t e^{γ_t − γ_j} k_tᵀ k_j
    t = unit_lower_inverse(a)
    u = t @ (beta.unsqueeze(-1) * v) - (t @ ((beta * torch.exp(gamma)).unsqueeze(-1) * k)) @ w0.transpose(-1, -2)
    gamma_end = gamma[..., -1:]
    to_end = torch.exp(gamma_end - gamma).unsqueeze(-1)  # e^{γ_C − γ_t}
    return torch.exp(gamma_end)[..., None] * w0 + (u * to_end).transpose(-1, -2) @ k
