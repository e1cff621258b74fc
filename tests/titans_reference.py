"""Sequential reference for the Titans memory update, for tests only.

Token by token with torch.autograd.grad, the same mini-batch semantics as the chunked form: within a
chunk every gradient is taken at the chunk-start weights (t' = t − mod(t, b), Eq 16), while momentum
(Eq 14) and forgetting (Eq 13) advance per token.
"""

import torch
import torch.nn.functional as F


def mlp(weights, x):
    a = x
    for i, w in enumerate(weights):
        a = a @ w.transpose(-1, -2)
        if i < len(weights) - 1:
            a = F.silu(a)
    return a


def sequential_update(state, k, v, alpha, theta, eta, chunk_size, mask=None, max_grad_norm=0.0):
    """mask [B,H,T] (optional): tokens where it is 0 are skipped (no write, no decay, no momentum step),
    but still count for chunk boundaries. max_grad_norm > 0 rescales each token's gradient of each
    memory layer (per batch row and head) to at most that Frobenius norm."""
    weights = [w.clone() for w in state["weights"]]
    momentum = [s.clone() for s in state["momentum"]]
    t_total = k.shape[2]
    chunk_start = [w.clone() for w in weights]
    for t in range(t_total):
        if t % chunk_size == 0:
            chunk_start = [w.detach().clone() for w in weights]
        w0 = [w.detach().clone().requires_grad_(True) for w in chunk_start]
        loss = (mlp(w0, k[:, :, t : t + 1]) - v[:, :, t : t + 1]).square().sum()
        grads = torch.autograd.grad(loss, w0)
        if max_grad_norm > 0:
            grads = [g * (max_grad_norm / g.norm(dim=(-2, -1), keepdim=True)).clamp(max=1.0) for g in grads]
        a, th, et = (g[:, :, t, None, None] for g in (alpha, theta, eta))
        new_momentum = [et * s - th * g for s, g in zip(momentum, grads)]
        new_weights = [(1 - a) * w + s for w, s in zip(weights, new_momentum)]
        keep = 1.0 if mask is None else mask[:, :, t, None, None]
        momentum = [keep * n + (1 - keep) * o for n, o in zip(new_momentum, momentum)]
        weights = [keep * n + (1 - keep) * o for n, o in zip(new_weights, weights)]
    return {"weights": weights, "momentum": momentum}


def sequential_delta(weights, k, v, alpha, beta, mask=None):
    """The gated delta rule token by token (model/delta_rule.py; Gated DeltaNet's recurrence, as
    flash-linear-attention's naive reference): W_t = g_t W_{t-1} + β_t (v_t − g_t W_{t-1} k_t) k_tᵀ,
    g_t = 1 − α_t. weights [B,H,d_out,d_in]; k, v [B,H,T,d]; alpha, beta, mask [B,H,T]. Differentiable."""
    w = weights
    for t in range(k.shape[2]):
        kt, vt = k[:, :, t, :, None], v[:, :, t, :, None]  # column vectors
        g, b = (1 - alpha[:, :, t, None, None]), beta[:, :, t, None, None]
        if mask is not None:
            m = mask[:, :, t, None, None]
            g, b = m * g + (1 - m), m * b
        w = g * w
        w = w + b * (vt - w @ kt) @ kt.transpose(-1, -2)
    return w
