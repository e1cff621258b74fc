"""Titans neural long-term memory (Behrouz et al. 2501.00663; seeds 002 and 004).

The memory is an MLP M (depth L_M, SiLU between layers, one small MLP per head) whose weights are
trained *at test time* on the associative loss ℓ_t = ‖M_{t-1}(k_t) − v_t‖² (Eq 12) with momentum
and forgetting:

    S_t = η_t S_{t-1} − θ_t ∇ℓ(M_{t'}; x_t)          (Eq 10/14, surprise with momentum)
    M_t = (1 − α_t) M_{t-1} + S_t                     (Eq 13, forgetting)
    y_t = M*_t(q_t)                                    (Eq 15, retrieval)

Chunked parallel form (Eq 16–18): inside a chunk every gradient is taken at the chunk-start weights
M_0 (t' = chunk start), so with β_i = Π_{j≤i}(1−α_j) and H_i = Π_{j≤i} η_j the chunk end is

    M_b = β_b M_0 + (Σ_i β_b/β_i · H_i) S_0 − Σ_k c_k ∇ℓ_k,   c_k = θ_k Σ_{i≥k} (β_b/β_i)(H_i/H_k)
    S_b = H_b S_0 − Σ_k d_k ∇ℓ_k,                             d_k = θ_k H_b/H_k

and since ∇_{W_l} ℓ_k = δ_{l,k} a_{l-1,k}ᵀ (analytic backprop through the MLP), each Σ_k c_k ∇ℓ_k is
a single GEMM (δ_l ⊙ c)ᵀ a_{l-1}: no autograd, no per-token weight tensors, no loop over tokens.
All products are formed in log space (cumsum of logs) and every exponent is ≤ 0, so nothing
overflows. The whole thing is differentiable, so the outer loss trains W_K, W_V, W_Q, the gates and M_0.

State = {"weights": [W_1..W_L], "momentum": [S_1..S_L]} (each [batch, heads, d_out, d_in]) and
"conv": the last (kernel − 1) pre-convolution k/v/q rows [batch, kernel − 1, 3·dim], so the short
causal convolution sees across chunk and segment boundaries exactly as over one long sequence.

rule="delta" (linear memory only) replaces Eq 16-18 by the exact chunk form of the gated delta rule
(model/delta_rule.py: every token sees the memory the tokens before it left; β_t = 2θ_t ≤ 1; momentum
kept in the state, unchanged). For rule="titans", `step` chooses how a chunk's gradients become its step
(remedies for correlated keys, measured in tests/test_memory_recall.py and the README):
  sum            Eq 16-18 as written
  mean           TTT (Sun et al. 2024, "Learning to (Learn at Test Time)"): the mini-batch gradient is
                 averaged over the chunk's tokens, the step η/d (θ per unit of mean squared error)
  huber          Huber loss instead of Eq 12's ℓ2 (Miras / "Yaad", Behrouz et al. 2025): a token's error
                 ∂ℓ/∂z_L = 2e·min(1, δ/‖e‖), δ = HUBER_RMS·sqrt(d), so one outlier cannot dominate a chunk
  newton_schulz  the chunk's update of each layer orthogonalised by 5 Newton-Schulz steps (Muon, Jordan et
                 al. 2024; Atlas, Behrouz et al. 2025), keeping its Frobenius norm: a chunk of correlated
                 keys no longer pours its whole step into their shared direction
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from neat_edge.model.delta_rule import delta_chunk, pad_tokens
from neat_edge.model.layers import RMSNorm

MemoryState = dict[str, list[torch.Tensor]]
RULES = ("titans", "delta")
STEPS = ("sum", "mean", "huber", "newton_schulz")
HUBER_RMS = 1.0  # Huber threshold δ on a token's error, per unit of RMS (δ = HUBER_RMS·sqrt(d_out))
NS_COEFFS = (3.4445, -4.7750, 2.0315)  # Muon's quintic Newton-Schulz coefficients (Jordan et al. 2024)


def silu_grad(z: torch.Tensor) -> torch.Tensor:
    """σ'(z) = s (1 + z (1 − s)), s = sigmoid(z) (seed 002 §3.3)."""
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """≈ U Vᵀ of g = U Σ Vᵀ (batched over leading axes), scaled back to ‖g‖_F: the update's direction
    with its singular values made equal. Five quintic steps on g/‖g‖_F, as Muon; a fixed count, matmuls
    only (exportable). A zero update stays zero."""
    wide = g.shape[-2] > g.shape[-1]
    x = g.transpose(-1, -2) if wide else g  # iterate on the wide orientation: X Xᵀ is the smaller Gram matrix
    norm = x.norm(dim=(-2, -1), keepdim=True)
    x = x / (norm + 1e-7)
    a, b, c = NS_COEFFS
    for _ in range(steps):
        gram = x @ x.transpose(-1, -2)
        x = a * x + (b * gram + c * gram @ gram) @ x
    x = x * (norm / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7))
    return x.transpose(-1, -2) if wide else x


class NeuralMemory(nn.Module):
    def __init__(self, dim: int, heads: int = 1, depth: int = 2, chunk_size: int = 64, expansion: int = 2,
                 alpha_init: float = 0.02, theta_init: float = 0.01, eta_init: float = 0.9,
                 theta_max: float = 0.02, eta_max: float = 0.95, conv_kernel: int = 4, max_grad_norm: float = 0.0,
                 rule: str = "titans", step: str = "sum", beta_init: float = 0.5, key_shift: bool = False):
        super().__init__()
        if rule not in RULES or step not in STEPS:
            raise ValueError(f"rule must be one of {RULES} and step one of {STEPS}")
        if rule == "delta" and (depth != 1 or step != "sum"):
            raise ValueError("rule 'delta' is the exact write of a linear memory: depth 1, step 'sum'")
        self.rule, self.step = rule, step
        # Per-token clipping of each memory layer's surprise gradient ‖∇_{W_l} ℓ_t‖ (0 = off), as
        # titans-pytorch's max_grad_norm: a bounded θ alone does not keep a deep memory's inner loop
        # stable, since its curvature grows with the weights (a trained 20 M model diverged to inf
        # within 12 segments of a held-out document without it).
        self.max_grad_norm = max_grad_norm
        if dim % heads:
            raise ValueError("dim must be divisible by heads")
        self.dim, self.heads, self.depth, self.chunk_size = dim, heads, depth, chunk_size
        self.head_dim = d = dim // heads
        widths = [d] + [d * expansion] * (depth - 1) + [d]
        self.shapes = [(widths[i + 1], widths[i]) for i in range(depth)]  # (d_out, d_in) per layer
        # Eq 11: key / value / query projections.
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        # Short depthwise causal convolution after the k, v, q projections (Titans §4.4), written as
        # a fixed sum of shifted slices (no Conv op with dynamic padding in the exported graph).
        self.conv_kernel = conv_kernel
        conv = torch.zeros(conv_kernel, 3 * dim)
        conv[-1] = 1.0  # starts as the identity: the current token only
        if key_shift:  # keys from the previous token, values and queries from the current one (Eq 11, shifted)
            conv[-1, :dim], conv[-2, :dim] = 0.0, 1.0
        self.conv_weight = nn.Parameter(conv)
        if key_shift:  # queries start as keys: a token's query finds the write keyed by the same content
            with torch.no_grad():
                self.to_q.weight.copy_(self.to_k.weight)
        # Inputs are RMS-normalised before Eq 11 so value magnitudes (and so surprise) stay bounded.
        self.norm = RMSNorm(dim)
        # Data-dependent gates: sigmoid-linear heads, one scalar per head and token (seed 002 §11.1
        # initial values: α = 0.02, θ = 0.01, η = 0.9). θ and η are scaled sigmoids (θ_max·σ, η_max·σ):
        # with a whole chunk's gradients taken at one point the chunk's effective step grows like
        # θ·b/(1−η), and an unbounded θ or η → 1 lets the inner loop diverge on long streams.
        # theta_init / theta_max are per unit of the *mean* squared error (as in titans-pytorch), so
        # the step on Eq 12's summed loss is divided by the head width: θ_t = θ_max·σ(·) / head_dim.
        self.theta_max, self.eta_max = theta_max / self.head_dim, eta_max
        if rule == "delta":  # the delta rule's β_t = 2θ_t = σ(·) ≤ 1 (β = 1: an exact overwrite), from beta_init
            self.theta_max, theta_init, theta_max = 0.5, beta_init / 2, 0.5
        self.gate_alpha, self.gate_theta, self.gate_eta = (nn.Linear(dim, heads) for _ in range(3))
        for gate, value in ((self.gate_alpha, alpha_init), (self.gate_theta, theta_init / theta_max),
                            (self.gate_eta, eta_init / eta_max)):
            nn.init.zeros_(gate.weight)
            nn.init.constant_(gate.bias, math.log(value / (1 - value)))
        # M_0: the learned initial memory weights (trained by the outer loop).
        self.init_weights = nn.ParameterList(
            nn.Parameter(torch.randn(heads, o, i) * i**-0.5) for o, i in self.shapes
        )

    # --- state -------------------------------------------------------------------------------
    def init_state(self, batch: int) -> MemoryState:
        weights = [w.unsqueeze(0).expand(batch, -1, -1, -1) for w in self.init_weights]
        return {"weights": weights, "momentum": [torch.zeros_like(w) for w in weights],
                "conv": [self.init_conv_state(batch)]}

    def init_conv_state(self, batch: int) -> torch.Tensor:
        return self.conv_weight.new_zeros(batch, self.conv_kernel - 1, 3 * self.dim)

    # --- Eq 11 and gates -----------------------------------------------------------------------
    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.reshape(b, t, self.heads, self.head_dim).transpose(1, 2)

    def project(self, x: torch.Tensor):
        """x [B,T,dim] -> k, v, q [B,H,T,head_dim] (Eq 11); keys and queries ℓ2-normalised. The
        convolution starts from an empty history; see project_stream to continue a stream."""
        k, v, q, _ = self.project_stream(x, self.init_conv_state(x.shape[0]))
        return k, v, q

    def project_stream(self, x: torch.Tensor, conv_state: torch.Tensor):
        """project() continuing a stream: returns k, v, q and the next convolution state."""
        x = self.norm(x)
        # one product with the three projections' weights side by side (a constant in an exported graph)
        kvq = F.linear(x, torch.cat([self.to_k.weight, self.to_v.weight, self.to_q.weight]))
        padded = torch.cat([conv_state, kvq], dim=1)
        t, n = x.shape[1], self.conv_kernel
        mixed = sum(padded[:, j : j + t] * self.conv_weight[j] for j in range(n))
        k, v, q = mixed.split(self.dim, dim=-1)
        k = F.normalize(self._heads(k), dim=-1)
        q = F.normalize(self._heads(q), dim=-1)
        return k, self._heads(v), q, padded[:, padded.shape[1] - (n - 1):]

    def gates(self, x: torch.Tensor):
        """x [B,T,dim] -> alpha (forget), theta (step), eta (momentum), each [B,H,T] in (0, 1)."""
        x = self.norm(x)
        gates = (self.gate_alpha, self.gate_theta, self.gate_eta)  # one product for the three heads
        logits = F.linear(x, torch.cat([g.weight for g in gates]), torch.cat([g.bias for g in gates]))
        alpha, theta, eta = torch.sigmoid(logits).transpose(1, 2).split(self.heads, dim=1)
        return alpha, theta * self.theta_max, eta * self.eta_max

    # --- Eq 15 ---------------------------------------------------------------------------------
    def _mlp(self, weights: list[torch.Tensor], x: torch.Tensor):
        """Forward through the memory MLP, keeping pre-activations and layer inputs for backprop."""
        inputs, pre = [], []
        a = x
        for layer, w in enumerate(weights):
            inputs.append(a)
            z = a @ w.transpose(-1, -2)
            pre.append(z)
            a = F.silu(z) if layer < len(weights) - 1 else z
        return a, inputs, pre

    def retrieve(self, state: MemoryState, q: torch.Tensor) -> torch.Tensor:
        """y = M*(q) (Eq 15) for q [B,H,T,head_dim] (or [B,T,d] when heads == 1); same shape out."""
        y = self._mlp(state["weights"], self._with_heads(q))[0]
        return y.squeeze(1) if q.dim() == 3 else y

    def _with_heads(self, t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 3:
            if self.heads != 1:
                raise ValueError("3-D k/v/q [B,T,d] are only accepted by a single-head memory")
            return t.unsqueeze(1)
        return t

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        """[B,H,T,head_dim] -> [B,T,dim] through the output projection."""
        b, h, t, d = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, h * d))

    # --- Eq 12-18: one chunk in closed form ----------------------------------------------------
    def update(self, state: MemoryState, k, v, alpha, theta, eta, mask=None) -> MemoryState:
        """Write all tokens of k/v [B,H,T,d] ([B,T,d] when heads == 1) into memory, chunk by chunk
        (chunk_size tokens). Gates are [B,H,T] or [B,T] (one gate shared by all heads); tokens where
        `mask` ([B,T] or [B,H,T]) is 0 are skipped: they neither write, decay nor move momentum."""
        k, v = self._with_heads(k), self._with_heads(v)
        alpha, theta, eta, mask = (g.unsqueeze(1) if g is not None and g.dim() == 2 else g
                                   for g in (alpha, theta, eta, mask))
        return self.scan(state, k, v, alpha, theta, eta, None, mask, self._n_chunks(k.shape[2]))[0]

    def _n_chunks(self, tokens: int) -> int:
        return max(1, -(-tokens // self.chunk_size))

    def scan(self, state: MemoryState, k, v, alpha, theta, eta, q=None, mask=None, n_chunks: int = 1):
        """Read-then-write in a *fixed* number of chunks, for exported graphs (no loop, no control flow
        on sizes): chunk c covers tokens [c·chunk_size, (c+1)·chunk_size) and is read with q at the
        weights left by chunks < c (Eq 15, causal), then written (Eq 16-18). The token count T may
        vary (a dynamic axis) up to n_chunks·chunk_size; the tail is padded with masked tokens, which
        change nothing. Chunk boundaries sit at fixed token indices, so they never depend on how
        many tokens follow. n_chunks = 1 is one chunk of all T tokens, whatever chunk_size says.
        Shapes: k, v, q [B,H,T,d]; gates and mask [B,H,T]. Returns (state, read [B,H,T,d] or None)."""
        if torch.is_autocast_enabled(k.device.type):  # bf16 training: the memory stays fp32 (seed 004 §8.3)
            with torch.autocast(k.device.type, enabled=False):
                k, v, alpha, theta, eta, q, mask = (None if x is None else x.float()
                                                    for x in (k, v, alpha, theta, eta, q, mask))
                return self.scan(state, k, v, alpha, theta, eta, q, mask, n_chunks)
        t, query = k.shape[2], q
        size = t
        if n_chunks > 1:
            size = self.chunk_size
            mask = torch.ones_like(alpha) if mask is None else mask  # padding needs one
            total = n_chunks * size  # static; pad_tokens adds no guard on the symbolic t under export
            k, v = (pad_tokens(x, total, 2) for x in (k, v))
            q = None if q is None else pad_tokens(q, total, 2)
            alpha, theta, eta, mask = (pad_tokens(g, total, -1) for g in (alpha, theta, eta, mask))
        # A static bound on the chunk length for the delta rule's padding: under export or compilation t is
        # symbolic (the graph's patches never exceed chunk_size · n_chunks); eagerly it is the length itself.
        capacity = size if isinstance(size, int) and not torch.compiler.is_compiling() else self.chunk_size
        reads = []
        for c in range(n_chunks):
            sl = slice(c * size, (c + 1) * size)
            state, read = self._read_and_update(state, k[:, :, sl], v[:, :, sl], alpha[..., sl], theta[..., sl],
                                                eta[..., sl], None if q is None else q[:, :, sl],
                                                None if mask is None else mask[..., sl], capacity)
            reads.append(read)
        if q is None or n_chunks == 1:
            return state, reads[0]
        # the first t reads; t appended zeros keep the slice free of a `t <= n_chunks·size` guard under export
        return state, torch.cat([*reads, torch.zeros_like(query)], dim=2)[:, :, :t]

    def _read_and_update(self, state: MemoryState, k, v, alpha, theta, eta, q, mask=None, capacity=None):
        """One chunk in closed form (Eq 16-18), plus (when q is given) the retrieval M*(q) at the same
        chunk-start weights, computed in the same MLP pass as the keys' forward. mask (1 = real) skips
        tokens entirely: α = θ = 0 and η = 1 there, and their step adds no momentum to M (w_i = 0
        below), so padding a chunk never changes the state."""
        if self.rule == "delta":
            return self._delta_read_and_update(state, k, v, alpha, theta, q, mask, capacity or k.shape[2])
        weights, momentum = state["weights"], state["momentum"]
        t = k.shape[2]
        if mask is not None:
            alpha, theta = alpha * mask, theta * mask
            eta = torch.where(mask > 0, eta, torch.ones_like(eta))
        if q is None:
            pred, inputs, pre = self._mlp(weights, k)
            read = None
        else:
            out, inputs, pre = self._mlp(weights, torch.cat([k, q], dim=2))
            pred, read = out[:, :, :t], out[:, :, t:]
            inputs, pre = [a[:, :, :t] for a in inputs], [z[:, :, :t] for z in pre]
        delta = 2.0 * (pred - v)  # ∂ℓ/∂z_L of Eq 12
        if self.step == "huber":  # Huber loss: the error's gradient capped at δ per token (Miras' Yaad)
            cap = HUBER_RMS * v.shape[-1] ** 0.5
            delta = delta * (cap / (pred - v).norm(dim=-1, keepdim=True).clamp(min=1e-12)).clamp(max=1.0)

        log_beta = torch.cumsum(torch.log1p(-alpha.clamp(max=1 - 1e-6)), dim=-1)  # log β_i
        log_h = torch.cumsum(torch.log(eta.clamp(min=1e-6)), dim=-1)  # log H_i
        log_beta_end, log_h_end = log_beta[..., -1:], log_h[..., -1:]
        # expo[k, i] = log(β_b/β_i · H_i/H_k); only i >= k contributes (masked before exp).
        decay_to_end = log_beta_end - log_beta + log_h  # log(β_b/β_i · H_i)
        expo = decay_to_end.unsqueeze(-2) - log_h.unsqueeze(-1)
        later = torch.ones(t, t, dtype=torch.bool, device=k.device).triu()
        if mask is not None:  # M_i = (1 − α_i) M_{i−1} + w_i S_i: skipped steps add no momentum
            later = later & (mask.unsqueeze(-2) > 0)
        coef_m = theta * torch.exp(torch.where(later, expo, torch.full_like(expo, -math.inf))).sum(-1)
        coef_s = theta * torch.exp(log_h_end - log_h)
        if self.step == "mean":  # TTT: the chunk's mini-batch gradient is the mean over its real tokens
            count = (mask if mask is not None else torch.ones_like(theta)).sum(-1, keepdim=True).clamp(min=1)
            coef_m, coef_s = coef_m / count, coef_s / count
        carry = torch.exp(decay_to_end) if mask is None else torch.exp(decay_to_end) * mask
        carry_m = carry.sum(-1)[..., None, None]  # weight of S_0 in M_b
        beta_end = torch.exp(log_beta_end)[..., None]
        h_end = torch.exp(log_h_end)[..., None]

        new_w, new_s = [None] * len(weights), [None] * len(weights)
        for layer in reversed(range(len(weights))):
            a_in = inputs[layer]
            c_m, c_s = coef_m, coef_s
            if self.max_grad_norm > 0:  # ‖δ_k a_kᵀ‖_F = ‖δ_k‖·‖a_k‖: the per-token norm without the outer product
                norm = delta.norm(dim=-1) * a_in.norm(dim=-1)
                scale = (self.max_grad_norm / norm.clamp(min=1e-12)).clamp(max=1.0)
                c_m, c_s = coef_m * scale, coef_s * scale
            grad_m = (delta * c_m.unsqueeze(-1)).transpose(-1, -2) @ a_in  # Σ_k c_k δ_k a_kᵀ
            grad_s = (delta * c_s.unsqueeze(-1)).transpose(-1, -2) @ a_in  # Σ_k d_k δ_k a_kᵀ
            if self.step == "newton_schulz":  # the step on M orthogonalised (momentum keeps the raw gradients)
                grad_m = newton_schulz(grad_m)
            new_w[layer] = beta_end * weights[layer] + carry_m * momentum[layer] - grad_m
            new_s[layer] = h_end * momentum[layer] - grad_s
            if layer > 0:
                delta = (delta @ weights[layer]) * silu_grad(pre[layer - 1])
        return {**state, "weights": new_w, "momentum": new_s}, read

    def _delta_read_and_update(self, state: MemoryState, k, v, alpha, theta, q, mask, capacity):
        """rule="delta": the read at the chunk-start memory, then the exact gated delta rule over the chunk
        (model/delta_rule.py) with β_t = 2θ_t and g_t = 1 − α_t; masked tokens get β = 0, g = 1."""
        w0 = state["weights"][0]
        read = None if q is None else q @ w0.transpose(-1, -2)  # Eq 15 for a linear memory
        beta = 2.0 * theta
        log_g = torch.log1p(-alpha.clamp(max=1 - 1e-6))
        if mask is not None:
            beta, log_g = beta * mask, log_g * mask
        w = delta_chunk(w0, k, v, log_g, beta, capacity)
        return {**state, "weights": [w], "momentum": list(state["momentum"])}, read

    # --- whole sequences -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor, state: MemoryState | None = None):
        """Run [B,T,dim] chunk by chunk: retrieve with the chunk-start memory, then update."""
        state = self.init_state(x.shape[0]) if state is None else state
        k, v, q, conv = self.project_stream(x, state["conv"][0])
        alpha, theta, eta = self.gates(x)
        state, read = self.scan(state, k, v, alpha, theta, eta, q, None, self._n_chunks(x.shape[1]))
        return self.merge(read), {**state, "conv": [conv]}
