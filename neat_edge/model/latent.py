"""Latent transformer over patches; every layer carries a Titans memory in MAC form (Eq 21-25).

Per segment of patches x (one step of the exported graph):
    h   = M*_{t-1}(q(x))                                   Eq 21: read the memory with the queries
    y   = x + Attn(x | [persistent ‖ h ‖ x])               Eq 22-23, causal over patches
    y   = y + norm(y) ⊙ sigmoid(W_g norm(M*_{t-1}(q(y))))  Eq 25 (read of the memory, gating)
    y   = y + MLP(y)
    M_t = update(M_{t-1}, k(y), v(y))                      Eq 24: write the attention output
The gate read uses the segment-start memory M_{t-1}, not M_t: reading the memory after it has been
written with the whole segment would let a patch see later patches, and the model must be strictly
causal. Attention and MLP projections are SVF linears driven by the graph input `svf_z`.
"""

from __future__ import annotations

import torch
from torch import nn

from neat_edge.config import NeatConfig
from neat_edge.model.layers import MLP, Attention, RMSNorm
from neat_edge.model.titans import MemoryState, NeuralMemory


class MACLayer(nn.Module):
    def __init__(self, cfg: NeatConfig):
        super().__init__()
        d = cfg.d_model
        # alpha 0.002 per patch (not the seed's 0.02 per token): one update covers a whole segment of
        # patches, and 0.98^32 per segment would erase the memory between two segments.
        self.memory = NeuralMemory(d, heads=cfg.memory_heads, depth=cfg.memory_depth,
                                   chunk_size=cfg.patches_per_segment, expansion=cfg.memory_expansion,
                                   alpha_init=0.002)
        self.persistent = nn.Parameter(torch.randn(cfg.persistent_tokens, d) * 0.02)  # Eq 19
        self.norm_attn, self.norm_kv = RMSNorm(d), RMSNorm(d)
        self.attn = Attention(d, cfg.latent_heads, svf=True)
        self.norm_gate_y, self.norm_gate_m = RMSNorm(d), RMSNorm(d)
        self.gate = nn.Linear(d, d)
        self.norm_mlp = RMSNorm(d)
        self.mlp = MLP(d, cfg.mlp_ratio, svf=True)

    def forward(self, x, patch_mask, state: MemoryState, z):
        b, p, d = x.shape
        mem = self.memory
        _, _, q_x = mem.project(x)
        h = mem.merge(mem.retrieve(state, q_x))  # Eq 21
        n_p = self.persistent.shape[0]
        kv = torch.cat([self.persistent.unsqueeze(0).expand(b, n_p, d), h, x], dim=1)  # Eq 22
        pos = torch.arange(p, device=x.device, dtype=x.dtype)
        k_pos = torch.cat([torch.zeros(n_p, device=x.device, dtype=x.dtype), pos, pos])
        causal = pos[:, None] >= pos[None, :]
        mask = torch.cat([torch.ones(p, n_p, dtype=torch.bool, device=x.device), causal, causal], dim=1)
        y = x + self.attn(self.norm_attn(x), self.norm_kv(kv), mask, z, pos, k_pos)  # Eq 23
        k_y, v_y, q_y = mem.project(y)
        read = mem.merge(mem.retrieve(state, q_y))
        y = y + self.norm_gate_y(y) * torch.sigmoid(self.gate(self.norm_gate_m(read)))  # Eq 25
        y = y + self.mlp(self.norm_mlp(y), z)
        # Eq 24: write the attention output; padded patches neither write nor decay the memory.
        alpha, theta, eta = mem.gates(y)
        valid = patch_mask.unsqueeze(1)
        new_state = mem.update_chunk(state, k_y, v_y, alpha * valid, theta * valid,
                                     torch.where(valid > 0, eta, torch.ones_like(eta)))
        return y, new_state


class LatentTransformer(nn.Module):
    def __init__(self, cfg: NeatConfig):
        super().__init__()
        self.layers = nn.ModuleList(MACLayer(cfg) for _ in range(cfg.latent_layers))
        self.norm = RMSNorm(cfg.d_model)

    def init_state(self, batch: int) -> list[MemoryState]:
        return [layer.memory.init_state(batch) for layer in self.layers]

    def forward(self, x, patch_mask, states: list[MemoryState], z):
        new_states = []
        for layer, state in zip(self.layers, states):
            x, state = layer(x, patch_mask, state, z)
            new_states.append(state)
        return self.norm(x), new_states
