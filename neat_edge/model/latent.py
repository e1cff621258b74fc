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
from neat_edge.model.layers import MLP, Attention, RMSNorm, write_slot
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
                                   rule=cfg.memory_rule, step=cfg.memory_step, key_shift=bool(cfg.memory_key_shift))
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
        if self.carries_window:  # sliding-window attention across segment boundaries (MAG, MAL)
            shapes.update({"window_rows": (self.window, mem.dim), "window_valid": (self.window,)})
        return shapes

    def init_state(self, batch: int) -> dict[str, torch.Tensor]:
        mem = self.memory.init_state(batch)
        state = {}
        for l, (w, s) in enumerate(zip(mem["weights"], mem["momentum"])):
            state[f"weight.{l}"], state[f"momentum.{l}"] = w, s
        state.update({name: self.memory.init_conv_state(batch) for name in self.conv_streams})
        if self.carries_window:  # no earlier patches in a fresh stream
            rows = self.persistent.new_zeros(batch, self.window, self.memory.dim)
            state.update({"window_rows": rows, "window_valid": rows[..., 0]})
        return state

    @property
    def carries_window(self) -> bool:
        """MAG and MAL attend over a sliding window of patches that runs over the whole stream (Titans
        §4.2-4.3): the last `attn_window` patches of a segment are carried into the next one. MAC's
        attention is segment-local by design (Eq 22), and a window of 0 means the segment."""
        return self.window > 0 and not self.segment_local

    segment_local = False

    def window_carry(self, rows, valid, block, n):
        """The last `window` patches of [carried ‖ this segment's n [B] patches]: rows [B,W,D] and valid
        [B,W] carried in, block [B,P,D] this segment's attention key rows (valid: the first n)."""
        w = self.window
        idx = n[:, None] + torch.arange(w, device=block.device)  # [B,W] into [carried ‖ block]
        p = torch.arange(block.shape[1], device=block.device)
        seg_valid = (p[None, :] < n[:, None]).to(valid.dtype)
        both = torch.cat([rows, block], 1)
        return (both.gather(1, idx[..., None].expand(-1, -1, both.shape[-1])),
                torch.cat([valid, seg_valid], 1).gather(1, idx))

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

    def prefix(self, run, batch: int):
        """The rows every patch's attention sees before the patches (Eq 19: the persistent tokens). They do
        not change within a segment, so a decode caches their keys and values at the segment's start."""
        return self._persistent(batch)

    def prefix_keys(self, run, batch: int, z):
        """Keys and values [B,H,n,Dh] of the prefix (position 0 for all: rotary leaves them as they are)."""
        return self.attn.keys_values(self.norm_kv(self.prefix(run, batch)), z)

    def _read_write(self, mem_state, src, k, v, q, patch_mask, new_state):
        """Eq 24 / 13-14 chunk by chunk: read q at the chunk-start memory, then write k, v; padded
        patches are skipped exactly. Returns the merged read [B,P,D] and the new layer state."""
        alpha, theta, eta = self.memory.gates(src)
        mask = patch_mask.unsqueeze(1).expand_as(alpha)
        mem, read = self.memory.scan(mem_state, k, v, alpha, theta, eta, q, mask, self.memory_chunks)
        for l, (w, s) in enumerate(zip(mem["weights"], mem["momentum"])):
            new_state[f"weight.{l}"], new_state[f"momentum.{l}"] = w, s
        return self.memory.merge(read), new_state

    # --- the two ways through a layer: a whole segment, or one patch of incremental decoding --------
    def forward(self, x, patch_mask, state, z):
        """A whole segment of patches x [B,P,D] from the layer state (the step graph, training)."""
        run = SegmentPass(self, state, patch_mask, z)
        return self.equations(x, run), run.new

    def patch_step(self, x, patch, state, mem_chunk, cache, z, close=None):
        """One patch x [B,1,D] at index patch [B] (incremental decoding) from the layer's segment-start
        state: the same equations over caches (decode.py); returns its output and the updated caches."""
        run = PatchPass(self, patch, state, mem_chunk, cache, z, close)
        return self.equations(x, run), run.new


class MACLayer(MemoryLayer):
    conv_streams = ("conv_in", "conv_out")
    segment_local = True

    def equations(self, x, run):
        _, _, q_x = run.project(x, "conv_in")
        h = run.read_start(q_x)  # Eq 21
        y = x + run.attend(x, self.prefix(run, x.shape[0]), [h, x])  # Eq 22-23: [persistent ‖ h ‖ x]
        k_y, v_y, q_y = run.project(y, "conv_out")
        read = run.read_write(y, k_y, v_y, q_y)  # Eq 24
        y = self._gate(y, read)  # Eq 25
        return y + self.mlp(self.norm_mlp(y), run.z)


class MAGLayer(MemoryLayer):
    def equations(self, x, run):
        k, v, q = run.project(x, "conv_in")
        y = x + run.attend(x, self.prefix(run, x.shape[0]), [x])  # Eq 26-27
        read = run.read_write(x, k, v, q)
        y = self._gate(y, read)  # Eq 28
        return y + self.mlp(self.norm_mlp(y), run.z)


class MALLayer(MemoryLayer):
    def equations(self, x, run):
        k, v, q = run.project(x, "conv_in")
        y = x + run.read_write(x, k, v, q)  # Eq 29-30
        y = y + run.attend(y, self.prefix(run, x.shape[0]), [y])  # Eq 31
        return y + self.mlp(self.norm_mlp(y), run.z)

    def prefix(self, run, batch: int):
        """Persistent tokens pass through the memory too, read at the segment start (Eq 29-30 on p; a fixed
        prefix: no conv history)."""
        p = self._persistent(batch)
        _, _, q_p = self.memory.project(p)
        return p + run.read_start(q_p)


class SegmentPass:
    """What the layer equations need, over a whole segment: projections continuing the convolution
    history, reads of the segment-start memory, causal attention over [prefix ‖ blocks], and the
    chunked write (NeuralMemory.scan) with its reads at each chunk's start."""

    def __init__(self, layer: MemoryLayer, state, patch_mask, z):
        self.layer, self.state, self.patch_mask, self.z = layer, state, patch_mask, z
        self.mem = layer._memory_state(state)  # M_{t-1}: the memory at the segment start
        self.new = {}

    def project(self, x, stream: str):
        k, v, q, self.new[stream] = self.layer.memory.project_stream(x, self.state[stream])
        return k, v, q

    def read_start(self, q):
        return self.layer._read(self.mem, q)

    def attend(self, queries, prefix, blocks):
        """queries [B,P,D] over [prefix ‖ block_1 ‖ ...]: every prefix row, and in each block the patches
        up to the query's own (within the attention window); with a carried window (MAG, MAL), also the
        previous segments' last patches at positions −W..−1."""
        layer, p, n_prefix = self.layer, queries.shape[1], prefix.shape[1]
        mask = prefix_causal_mask(p, n_prefix, layer.window, queries.device, len(blocks))
        q_pos, k_pos = key_positions(p, n_prefix, queries.dtype, queries.device, len(blocks))
        if not layer.carries_window:
            keys = torch.cat([prefix, *blocks], dim=1)
            return layer.attn(layer.norm_attn(queries), layer.norm_kv(keys), mask, self.z, q_pos, k_pos)
        rows, valid = self.state["window_rows"], self.state["window_valid"]
        w, batch = rows.shape[1], rows.shape[0]
        r = torch.arange(w, device=queries.device)
        # carried row r sits at position r − W: patch q sees it while q − (r − W) < W, i.e. r > q
        carried = (r[None, :] > q_pos[:, None].long())[None] & (valid[:, None, :] > 0)  # [B,P,W]
        mask = torch.cat([mask[:, :n_prefix].expand(batch, -1, -1), carried,
                          mask[:, n_prefix:].expand(batch, -1, -1)], dim=2).unsqueeze(1)
        k_pos = torch.cat([k_pos[:n_prefix], (r - w).to(k_pos.dtype), k_pos[n_prefix:]])
        keys = torch.cat([prefix, rows, *blocks], dim=1)
        self.new["window_rows"], self.new["window_valid"] = layer.window_carry(
            rows, valid, blocks[0], self.patch_mask.sum(-1).long())
        return layer.attn(layer.norm_attn(queries), layer.norm_kv(keys), mask, self.z, q_pos, k_pos)

    def read_write(self, src, k, v, q):
        read, self.new = self.layer._read_write(self.mem, src, k, v, q, self.patch_mask, self.new)
        return read


class PatchPass:
    """The same, for one patch per stream during incremental decoding. Caches (names as in
    decode.py's layout): the convolution histories, the attention keys/values of the segment's patches
    so far (block b at slots b·P..b·P+P−1), and the write inputs of every patch (k, v and the gates),
    which the memory write at a chunk's end or the segment's end consumes (decode.py). Reads use the
    segment-start memory (mem_start) and the current chunk's start memory (mem_chunk), as the
    segment pass does. close [B] (bool, optional) leaves the caches of streams where it is False as
    they were (a batch in which only some streams end a patch)."""

    def __init__(self, layer: MemoryLayer, patch, state, mem_chunk, cache, z, close=None):
        self.layer, self.patch, self.z, self.close = layer, patch, z, close
        # Reads need the memory weights only (Eq 15): the graph is given no momentum here.
        self.state = state
        self.mem_start = {"weights": [state[f"weight.{l}"] for l in range(layer.memory.depth)]}
        self.mem_chunk = self.mem_start if mem_chunk is None else mem_chunk
        self.cache, self.new = cache, {}

    def _keep(self, new, old):
        return new if self.close is None else torch.where(self.close.reshape(-1, *[1] * (new.dim() - 1)), new, old)

    def project(self, x, stream: str):
        k, v, q, conv = self.layer.memory.project_stream(x, self.cache[stream])
        self.new[stream] = self._keep(conv, self.cache[stream])
        return k, v, q

    def read_start(self, q):
        return self.layer._read(self.mem_start, q)

    def attend(self, queries, prefix, blocks):
        layer, n_prefix = self.layer, prefix.shape[1]
        cache_k, cache_v = self.cache["k"], self.cache["v"]
        span = cache_k.shape[2] // len(blocks)  # patches a block holds
        pos = self.patch.to(queries.dtype).unsqueeze(1)  # [B,1]
        for b, rows in enumerate(blocks):  # this patch's keys, rotated to its position, into block b
            k, v = layer.attn.keys_values(layer.norm_kv(rows), self.z, pos)
            cache_k = write_slot(cache_k, k, self.patch + b * span, 2, self.close)
            cache_v = write_slot(cache_v, v, self.patch + b * span, 2, self.close)
        self.new["k"], self.new["v"] = cache_k, cache_v
        if "prefix_k" in self.cache:  # cached at the segment start (decode_start)
            k_pre, v_pre = self.cache["prefix_k"], self.cache["prefix_v"]
        else:
            k_pre, v_pre = layer.attn.keys_values(layer.norm_kv(prefix), self.z)  # position 0: no rotation
        j = torch.arange(span, device=queries.device)
        seen = (j <= self.patch[:, None]) & (self.patch[:, None] - j < (layer.window or span))  # [B, span]
        parts_k, parts_v, parts_mask = [k_pre], [v_pre], [torch.ones_like(seen[:, :1]).expand(-1, n_prefix)]
        if layer.carries_window:  # the previous segments' last patches, at positions −W..−1 (SegmentPass)
            rows, valid = self.state["window_rows"], self.state["window_valid"]
            r = torch.arange(rows.shape[1], device=queries.device)
            k_c, v_c = layer.attn.keys_values(layer.norm_kv(rows), self.z, (r - rows.shape[1]).to(queries.dtype))
            parts_k.append(k_c)
            parts_v.append(v_c)
            parts_mask.append((r[None, :] > self.patch[:, None]) & (valid > 0))
            self.new["rows"] = write_slot(self.cache["rows"], blocks[0], self.patch, 1, self.close)
        mask = torch.cat(parts_mask + [seen] * len(blocks), dim=1)
        q = layer.attn.queries(layer.norm_attn(queries), self.z, pos)
        return layer.attn.combine(q, torch.cat([*parts_k, cache_k], 2), torch.cat([*parts_v, cache_v], 2),
                                  mask[:, None, None, :], self.z)

    def read_write(self, src, k, v, q):
        """Keep this patch's write inputs (Eq 11 k, v; gates α, θ, η) for the chunk's write; read q at
        the chunk-start memory (Eq 15)."""
        alpha, theta, eta = self.layer.memory.gates(src)
        for name, rows in (("write_k", k), ("write_v", v), ("write_alpha", alpha), ("write_theta", theta),
                           ("write_eta", eta)):
            self.new[name] = write_slot(self.cache[name], rows, self.patch, 2, self.close)
        return self.layer._read(self.mem_chunk, q)


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
