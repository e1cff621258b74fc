"""Latent transformer over patches; every layer carries a Titans memory (Titans §4, Eq 19–31).

Three ways to combine memory and attention, selected by `NeatConfig.memory_arch`:

MAC, memory as context (Eq 21–25), per segment of patches x:
    h   = M*_{t-1}(q(x))                                   Eq 21: read the memory with the queries
    y   = x + Attn(x | [persistent ‖ h ‖ x])               Eq 22-23, causal over patches
    y   = y + norm(y) ⊙ σ(W_g norm(M*_{c-1}(q(y))))        Eq 25 (a read of the memory gates y)
    M_t = update(M_{t-1}, k(y), v(y))                      Eq 24: write the attention output
MAG, memory as gate (Eq 26–28):
    y   = x + SWA(x | [persistent ‖ x])                    Eq 26-27, sliding-window attention
    o   = y + norm(y) ⊙ σ(W_g norm(M*_{c-1}(q(x))))        Eq 28, memory branch on the input
    M_t = update(M_{t-1}, k(x), v(x))
MAL, memory as layer (Eq 29–31):
    y   = x + M*_{c-1}(q(x)),  p' = p + M*_{t-1}(q(p))     Eq 29-30 on [persistent ‖ x]
    o   = y + SWA(y | [p' ‖ y])                            Eq 31
    M_t = update(M_{t-1}, k(x), v(x))
Each is followed by an MLP. The write is split into `memory_chunks` chunks at fixed patch indices
(NeuralMemory.scan, a fixed unrolled count: with entropy patching the chunks span the most patches a
segment can have, segment_len, so short segments carry padded, masked chunks — one chunk avoids that
cost); M*_{c-1} is the memory left by the chunks before the patch's own chunk (the segment-start
memory M_{t-1} for the first). A patch never reads a memory that has seen it or later patches: the
model is strictly causal. Several chunks per segment keep
the inner loop stable when a segment has many patches (each chunk's gradients share one point, so
its step grows with the chunk length: 128 one-byte patches in one chunk diverged in training).
Attention and MLP projections are SVF linears driven by the graph input `svf_z`.

Layer state (flat names, prefixed with `memory.{layer}.` in the model): `weight.{l}`, `momentum.{l}`
for the memory MLP, and the short-convolution histories `conv_in` (and `conv_out` for MAC).
"""

from __future__ import annotations

import torch
from torch import nn

from neat_edge.config import NeatConfig
from neat_edge.model.layers import MLP, Attention, RMSNorm
from neat_edge.model.titans import NeuralMemory


def prefix_causal_mask(p: int | torch.SymInt, n_prefix: int, window: int, device, copies: int = 1):
    """[p, n_prefix + copies·p] bool: every prefix key, then `copies` blocks of causal keys limited to
    the last `window` patches (window 0 = the whole segment)."""
    pos = torch.arange(p, device=device)
    causal = pos[:, None] >= pos[None, :]
    if window:
        causal = causal & (pos[:, None] - pos[None, :] < window)
    return torch.cat([torch.ones(p, n_prefix, dtype=torch.bool, device=device)] + [causal] * copies, dim=1)


def key_positions(p: int | torch.SymInt, n_prefix: int, dtype, device, copies: int = 1):
    pos = torch.arange(p, device=device, dtype=dtype)
    return pos, torch.cat([torch.zeros(n_prefix, device=device, dtype=dtype)] + [pos] * copies)


class MemoryLayer(nn.Module):
    """What the three variants share: memory, persistent tokens, attention, gate, MLP, state I/O."""

    conv_streams: tuple[str, ...] = ("conv_in",)

    def __init__(self, cfg: NeatConfig):
        super().__init__()
        d = cfg.d_model
        # alpha 0.002 per patch (not the seed's 0.02 per token): 0.98^32 per segment of patches would
        # erase the memory between two segments.
        self.memory = NeuralMemory(d, heads=cfg.memory_heads, depth=cfg.memory_depth,
                                   chunk_size=-(-cfg.max_patches_per_segment // cfg.memory_chunks),
                                   expansion=cfg.memory_expansion, alpha_init=0.002,
                                   theta_init=cfg.memory_theta_init, theta_max=cfg.memory_theta_max,
                                   max_grad_norm=cfg.memory_max_grad_norm,
                                   rule=cfg.memory_rule, step=cfg.memory_step)
        self.memory_chunks = cfg.memory_chunks
        self.persistent = nn.Parameter(torch.randn(cfg.persistent_tokens, d) * 0.02)  # Eq 19
        self.window = cfg.attn_window
        self.norm_attn, self.norm_kv = RMSNorm(d), RMSNorm(d)
        self.attn = Attention(d, cfg.latent_heads, svf=True)
        self.norm_gate_y, self.norm_gate_m = RMSNorm(d), RMSNorm(d)
        self.gate = nn.Linear(d, d)
        self.norm_mlp = RMSNorm(d)
        self.mlp = MLP(d, cfg.mlp_ratio, svf=True)

    # --- state -----------------------------------------------------------------------------------
    def state_shapes(self) -> dict[str, tuple]:
        mem = self.memory
        shapes = {}
        for kind in ("weight", "momentum"):
            shapes.update({f"{kind}.{l}": (mem.heads, o, i) for l, (o, i) in enumerate(mem.shapes)})
        shapes.update({name: (mem.conv_kernel - 1, 3 * mem.dim) for name in self.conv_streams})
        return shapes

    def init_state(self, batch: int) -> dict[str, torch.Tensor]:
        mem = self.memory.init_state(batch)
        state = {}
        for l, (w, s) in enumerate(zip(mem["weights"], mem["momentum"])):
            state[f"weight.{l}"], state[f"momentum.{l}"] = w, s
        state.update({name: self.memory.init_conv_state(batch) for name in self.conv_streams})
        return state

    def _memory_state(self, state):
        depth = self.memory.depth
        return {"weights": [state[f"weight.{l}"] for l in range(depth)],
                "momentum": [state[f"momentum.{l}"] for l in range(depth)]}

    # --- shared pieces ---------------------------------------------------------------------------
    def _read(self, mem_state, q):
        return self.memory.merge(self.memory.retrieve(mem_state, q))

    def _gate(self, y, read):
        return y + self.norm_gate_y(y) * torch.sigmoid(self.gate(self.norm_gate_m(read)))

    def _persistent(self, batch):
        return self.persistent.unsqueeze(0).expand(batch, -1, -1)

    def _read_write(self, mem_state, src, k, v, q, patch_mask, new_state):
        """Eq 24 / 13-14 chunk by chunk: read q at the chunk-start memory, then write k, v; padded
        patches are skipped exactly. Returns the merged read [B,P,D] and the new layer state."""
        alpha, theta, eta = self.memory.gates(src)
        mask = patch_mask.unsqueeze(1).expand_as(alpha)
        mem, read = self.memory.scan(mem_state, k, v, alpha, theta, eta, q, mask, self.memory_chunks)
        for l, (w, s) in enumerate(zip(mem["weights"], mem["momentum"])):
            new_state[f"weight.{l}"], new_state[f"momentum.{l}"] = w, s
        return self.memory.merge(read), new_state

    def _attend(self, queries, keys, n_prefix, z, copies=1):
        p = queries.shape[1]
        mask = prefix_causal_mask(p, n_prefix, self.window, queries.device, copies)
        q_pos, k_pos = key_positions(p, n_prefix, queries.dtype, queries.device, copies)
        return self.attn(self.norm_attn(queries), self.norm_kv(keys), mask, z, q_pos, k_pos)


class MACLayer(MemoryLayer):
    conv_streams = ("conv_in", "conv_out")

    def forward(self, x, patch_mask, state, z):
        mem_state = self._memory_state(state)
        new_state = {}
        _, _, q_x, new_state["conv_in"] = self.memory.project_stream(x, state["conv_in"])
        h = self._read(mem_state, q_x)  # Eq 21
        kv = torch.cat([self._persistent(x.shape[0]), h, x], dim=1)  # Eq 22
        y = x + self._attend(x, kv, self.persistent.shape[0], z, copies=2)  # Eq 23
        k_y, v_y, q_y, new_state["conv_out"] = self.memory.project_stream(y, state["conv_out"])
        read, new_state = self._read_write(mem_state, y, k_y, v_y, q_y, patch_mask, new_state)  # Eq 24
        y = self._gate(y, read)  # Eq 25
        return y + self.mlp(self.norm_mlp(y), z), new_state


class MAGLayer(MemoryLayer):
    def forward(self, x, patch_mask, state, z):
        mem_state = self._memory_state(state)
        new_state = {}
        k, v, q, new_state["conv_in"] = self.memory.project_stream(x, state["conv_in"])
        kv = torch.cat([self._persistent(x.shape[0]), x], dim=1)
        y = x + self._attend(x, kv, self.persistent.shape[0], z)  # Eq 26-27
        read, new_state = self._read_write(mem_state, x, k, v, q, patch_mask, new_state)
        y = self._gate(y, read)  # Eq 28
        return y + self.mlp(self.norm_mlp(y), z), new_state


class MALLayer(MemoryLayer):
    def forward(self, x, patch_mask, state, z):
        mem_state = self._memory_state(state)
        new_state = {}
        k, v, q, new_state["conv_in"] = self.memory.project_stream(x, state["conv_in"])
        read, new_state = self._read_write(mem_state, x, k, v, q, patch_mask, new_state)
        y = x + read  # Eq 29-30
        # Persistent tokens pass through the memory too (they are a fixed prefix: no conv history).
        p = self._persistent(x.shape[0])
        _, _, q_p = self.memory.project(p)
        p = p + self._read(mem_state, q_p)
        y = y + self._attend(y, torch.cat([p, y], dim=1), p.shape[1], z)  # Eq 31
        return y + self.mlp(self.norm_mlp(y), z), new_state


LAYERS = {"mac": MACLayer, "mag": MAGLayer, "mal": MALLayer}


class LatentTransformer(nn.Module):
    def __init__(self, cfg: NeatConfig):
        super().__init__()
        layer = LAYERS[cfg.memory_arch]
        self.layers = nn.ModuleList(layer(cfg) for _ in range(cfg.latent_layers))
        self.norm = RMSNorm(cfg.d_model)

    def forward(self, x, patch_mask, states: list[dict], z):
        new_states = []
        for layer, state in zip(self.layers, states):
            x, state = layer(x, patch_mask, state, z)
            new_states.append(state)
        return self.norm(x), new_states
