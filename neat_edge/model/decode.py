"""Incremental decoding: the segment step taken one byte at a time, with its caches as state.

Generating with the segment step alone re-runs the whole pending partial segment for every new byte.
Here each new byte costs one token through the local encoder and one position through the local
decoder; a closed patch costs one patch through the latent layers; a completed segment one memory
write. Every form below runs the same module code as NeatModel.step (LocalBlock.step, LocalEncoder.pool,
MemoryLayer.equations through PatchPass, NeuralMemory.scan), so the logits and the state it leaves are
the segment step's, up to float rounding.

Positions, for a segment of S bytes b_0..b_{S-1} after W context bytes (model/blt.py indexing):
  * the encoder window holds [context ‖ b_0 .. b_i]; b_i sits at window slot W + i;
  * decoder position i predicts b_i from the encoder hidden of slot W + i − 1, cross-attending to latent
    slots 0..patch_ids[i] (slot 0: the carried latent of the previous segment; slot p + 1: patch p);
  * latent patch p attends to the segment's patches 0..p; its memory reads use the segment-start
    memory M_{t-1} and the current chunk's start memory, as in the segment step.

The graphs (model/graphs.py, declared in spec.py):
  decode_start   context bytes, latent carry -> caches for a new segment; log p(b_0)
  decode_byte    b_i (no patch closes) -> log p(b_{i+1})
  decode_patch   b_i closes patch p -> patch p through the latent layers; log p(b_{i+1})
  decode_commit  b_{S-1} closes the segment -> the last patch, the memory write: the committed state
  decode_chunk   (memory_chunks > 1) a completed chunk of patches written into the chunk memory
Which one runs for a byte (and where patches close) is the runtime's decision (runtimes/decoding.py).
"""

from __future__ import annotations

import torch

from neat_edge.config import NeatConfig
from neat_edge.model.layers import write_slot
from neat_edge.model.neat import layer_state_name
from neat_edge.spec import cache_from_state

CACHE, NEXT_CACHE = "cache.", "next_cache."


def chunk_span(cfg: NeatConfig) -> int:
    """Patches per memory chunk (the write cache holds memory_chunks of them: a segment's patches)."""
    return -(-cfg.max_patches_per_segment // cfg.memory_chunks)


def cache_layout(model) -> dict[str, tuple[tuple, str]]:
    """Every decode cache: name -> (shape after the batch axis, dtype). Fixed sizes: the window, the
    segment and the patches a segment can hold."""
    cfg = model.cfg
    w, s = cfg.context_len, cfg.segment_len
    hl, dl = cfg.local_heads, cfg.d_local // cfg.local_heads
    hm, dm = cfg.latent_heads, cfg.d_model // cfg.latent_heads
    patches = chunk_span(cfg) * cfg.memory_chunks
    layout = {"tokens": ((w + s,), "int64"), "seg_hidden": ((s, cfg.d_local), "float32")}
    for l in range(cfg.encoder_layers):
        layout.update({f"enc.{l}.{kv}": ((hl, w + s, dl), "float32") for kv in "kv"})
    for l in range(cfg.decoder_layers):
        layout.update({f"dec.{l}.{kv}": ((hl, s, dl), "float32") for kv in "kv"})
        layout.update({f"dec.{l}.cross_{kv}": ((hl, patches + 1, dl), "float32") for kv in "kv"})
    for i, layer in enumerate(model.latent.layers):
        mem = layer.memory
        blocks = 2 if cfg.memory_arch == "mac" else 1
        layout.update({f"latent.{i}.{kv}": ((hm, blocks * patches, dm), "float32") for kv in "kv"})
        for stream in layer.conv_streams:
            layout[f"latent.{i}.{stream}"] = ((mem.conv_kernel - 1, 3 * mem.dim), "float32")
        for kv in "kv":
            layout[f"latent.{i}.write_{kv}"] = ((mem.heads, patches, mem.head_dim), "float32")
        for gate in ("alpha", "theta", "eta"):
            layout[f"latent.{i}.write_{gate}"] = ((mem.heads, patches), "float32")
        if cfg.persistent_tokens:  # the prefix's keys and values: fixed within a segment
            layout.update({f"latent.{i}.prefix_{kv}": ((hm, cfg.persistent_tokens, dm), "float32") for kv in "kv"})
        if layer.carries_window:  # this segment's attention key rows, for the next segment's window
            layout[f"latent.{i}.rows"] = ((patches, cfg.d_model), "float32")
        if cfg.memory_chunks > 1:
            for l, (o, n) in enumerate(mem.shapes):
                layout.update({f"chunk.{i}.{kind}.{l}": ((mem.heads, o, n), "float32")
                               for kind in ("weight", "momentum")})
    return layout


def caches_from_state(cache: dict, state: dict) -> dict:
    """The caches a segment starts with a copy of the committed state (spec.cache_from_state), of the
    state tensors given (the decode_start graph is given none of them: the runtime copies them)."""
    sources = {name: cache_from_state(name) for name in cache}  # (no walrus: TorchDynamo rejects it here)
    return {name: state[source].clone() for name, source in sources.items() if source in state}


class PrefixReads:
    """What a layer's prefix may read at a segment's start: the segment-start memory (MAL's persistent
    tokens pass through it)."""

    def __init__(self, layer_state: dict, layer):
        self.weights = {"weights": [layer_state[f"weight.{l}"] for l in range(layer.memory.depth)]} \
            if "weight.0" in layer_state else None
        self.layer = layer

    def read_start(self, q):
        return self.layer._read(self.weights, q)


class IncrementalDecoder:
    """The decode forms of one NeatModel (weights shared, nothing copied). Caches are dicts keyed by
    cache_layout's names; state is the model's state dict (committed, segment-start)."""

    def __init__(self, model):
        self.model, self.cfg = model, model.cfg

    # --- pieces -----------------------------------------------------------------------------------
    def _pairs(self, cache, prefix: str, n: int):
        return [(cache[f"{prefix}.{l}.k"], cache[f"{prefix}.{l}.v"]) for l in range(n)]

    def _layer_cache(self, cache, i: int) -> dict:
        head = f"latent.{i}."
        return {k[len(head):]: v for k, v in cache.items() if k.startswith(head)}

    def _chunk_memory(self, cache, i: int, momentum: bool = True) -> dict:
        """The memory at the current chunk's start (memory_chunks > 1); reads need only its weights."""
        depth = self.model.latent.layers[i].memory.depth
        mem = {"weights": [cache[f"chunk.{i}.weight.{l}"] for l in range(depth)]}
        if momentum:
            mem["momentum"] = [cache[f"chunk.{i}.momentum.{l}"] for l in range(depth)]
        return mem

    def _layer_state(self, state, i: int) -> dict:
        """Latent layer i's part of the (segment-start) state, of the tensors a graph was given."""
        layer = self.model.latent.layers[i]
        return {k: state[layer_state_name(i, k)] for k in layer.state_shapes() if layer_state_name(i, k) in state}

    def _encode(self, token, position, cache, z):
        """Token [B,1] at segment position [B] through the local encoder: its hidden, and the caches
        with its row (window token, keys/values, normed hidden for pooling) written."""
        slot = position + self.cfg.context_len
        new = dict(cache)
        new["tokens"] = write_slot(cache["tokens"], token, slot, 1)
        x, seg, kv = self.model.encoder.step(new["tokens"], slot, self._pairs(cache, "enc", self.cfg.encoder_layers), z)
        for l, (k, v) in enumerate(kv):
            new[f"enc.{l}.k"], new[f"enc.{l}.v"] = k, v
        new["seg_hidden"] = write_slot(cache["seg_hidden"], seg, position, 1)
        return x, new

    def _decode(self, x, position, n_latents, cache, z):
        """Decoder position [B] from the encoder hidden x of the byte before it: log-probs, hidden."""
        hidden, kv = self.model.decoder.step(x, position, self._pairs(cache, "dec", self.cfg.decoder_layers),
                                             self._pairs_cross(cache), n_latents, z)
        for l, (k, v) in enumerate(kv):
            cache[f"dec.{l}.k"], cache[f"dec.{l}.v"] = k, v
        logprobs = torch.log_softmax(self.model.byte_head(hidden), dim=-1)
        return logprobs[:, 0], hidden[:, 0]

    def _pairs_cross(self, cache):
        return [(cache[f"dec.{l}.cross_k"], cache[f"dec.{l}.cross_v"]) for l in range(self.cfg.decoder_layers)]

    def _latent(self, position, patch, patch_start, state, cache, z, close=None, cross: bool = True):
        """Patch `patch` [B] (bytes patch_start..position of seg_hidden) through the latent layers:
        its latent [B,1,d_model]; caches updated (layer caches, and with `cross` its cross keys/values
        at slot patch+1, for the decoder)."""
        s = self.cfg.segment_len
        j = torch.arange(s, device=position.device)
        member = ((j >= patch_start[:, None]) & (j <= position[:, None])).to(cache["seg_hidden"].dtype)
        x = self.model.encoder.pool(cache["seg_hidden"], member.unsqueeze(-1), z)  # [B,1,d_model]
        for i, layer in enumerate(self.model.latent.layers):
            layer_state = self._layer_state(state, i)
            mem_chunk = self._chunk_memory(cache, i, momentum=False) if self.cfg.memory_chunks > 1 else None
            x, layer_new = layer.patch_step(x, patch, layer_state, mem_chunk, self._layer_cache(cache, i), z, close)
            cache.update({f"latent.{i}.{k}": v for k, v in layer_new.items()})
        latent = self.model.latent.norm(x)
        for l, (k, v) in enumerate(self.model.decoder.cross_kv(latent, z) if cross else []):
            for name, rows in ((f"dec.{l}.cross_k", k), (f"dec.{l}.cross_v", v)):
                cache[name] = write_slot(cache[name], rows, patch + 1, 2, close)
        return latent

    def _write(self, mem, cache, i: int, lo, hi):
        """Layer i's memory write (Eq 13-18, NeuralMemory.scan as in the segment step) of the patches
        lo [B] <= p < hi [B] from their cached k, v and gates, onto `mem`."""
        layer = self.model.latent.layers[i]
        p = torch.arange(cache[f"latent.{i}.write_alpha"].shape[-1], device=lo.device)
        mask = ((p >= lo[:, None]) & (p < hi[:, None])).to(cache[f"latent.{i}.write_alpha"].dtype)
        mask = mask.unsqueeze(1).expand_as(cache[f"latent.{i}.write_alpha"])
        get = lambda name: cache[f"latent.{i}.write_{name}"]  # noqa: E731
        # all of the segment's chunk slots, as the segment step lays them out: the ones outside lo..hi are
        # masked, which the closed forms skip exactly (and every chunk keeps the segment step's length)
        new, _ = layer.memory.scan(mem, get("k"), get("v"), get("alpha"), get("theta"), get("eta"), None, mask,
                                   self.cfg.memory_chunks)
        return new

    # --- the graphs -------------------------------------------------------------------------------
    def start(self, state, z):
        """A new segment from the committed state: (log p of its first byte [B,V], hidden [B,d_local],
        caches)."""
        cfg, model = self.cfg, self.model
        context = state["byte_context"]
        batch, w = context.shape
        keep = []
        x, _ = model.encoder(context, None, None, z, keep_kv=keep)  # the context alone: causal
        ref = x
        cache = {}
        for name, (shape, dtype) in cache_layout(model).items():
            cache[name] = torch.zeros((batch, *shape), dtype=getattr(torch, dtype), device=ref.device)
        cache["tokens"] = torch.cat([context, cache["tokens"][:, w:]], dim=1)
        pad = cfg.segment_len
        for l, (k, v) in enumerate(keep):  # context rows at slots 0..W-1
            cache[f"enc.{l}.k"] = torch.nn.functional.pad(k, (0, 0, 0, pad))
            cache[f"enc.{l}.v"] = torch.nn.functional.pad(v, (0, 0, 0, pad))
        for l, (k, v) in enumerate(model.decoder.cross_kv(state["latent_carry"].unsqueeze(1), z)):
            n = cache[f"dec.{l}.cross_k"].shape[2] - 1
            cache[f"dec.{l}.cross_k"] = torch.nn.functional.pad(k, (0, 0, 0, n))
            cache[f"dec.{l}.cross_v"] = torch.nn.functional.pad(v, (0, 0, 0, n))
        cache.update(caches_from_state(cache, state))
        if cfg.persistent_tokens:
            for i, layer in enumerate(model.latent.layers):
                reads = PrefixReads(self._layer_state(state, i), layer)
                cache[f"latent.{i}.prefix_k"], cache[f"latent.{i}.prefix_v"] = layer.prefix_keys(reads, batch, z)
        zero = torch.zeros(batch, dtype=torch.long, device=ref.device)
        logprobs, hidden = self._decode(x[:, w - 1 :], zero, zero + 1, cache, z)
        return logprobs, hidden, cache

    def byte(self, token, position, patch, cache, z):
        """b_i = token at segment position i (< S-1) leaves patch `patch` open: log p(b_{i+1}), hidden,
        caches."""
        x, cache = self._encode(token, position, cache, z)
        logprobs, hidden = self._decode(x, position + 1, patch + 1, cache, z)
        return logprobs, hidden, cache

    def patch(self, token, position, patch, patch_start, state, cache, z, close=None):
        """b_i closes patch `patch` (its bytes: patch_start..i); b_{i+1} starts patch + 1. close [B] bool:
        which streams of the batch close their patch here (None: all)."""
        x, cache = self._encode(token, position, cache, z)
        self._latent(position, patch, patch_start, state, cache, z, close)
        n_latents = patch + 1 + (1 if close is None else close.long())
        logprobs, hidden = self._decode(x, position + 1, n_latents, cache, z)
        return logprobs, hidden, cache

    def commit(self, token, position, patch, patch_start, state, cache, z):
        """b_{S-1} completes the segment: the state the segment step leaves (memory written)."""
        _, cache = self._encode(token, position, cache, z)
        latent = self._latent(position, patch, patch_start, state, cache, z, cross=False)
        span = chunk_span(self.cfg)
        # the last chunk (chunk() wrote the earlier ones); patch >= 0, so a truncating division (floor
        # division exports a sign fix-up on booleans, which TensorRT lacks)
        first = torch.div(patch, span, rounding_mode="trunc") * span
        new = {"byte_context": cache["tokens"][:, cache["tokens"].shape[1] - self.cfg.context_len:],
               "latent_carry": latent[:, 0]}
        for i, layer in enumerate(self.model.latent.layers):
            layer_state = self._layer_state(state, i)
            base = self._chunk_memory(cache, i) if self.cfg.memory_chunks > 1 else layer._memory_state(layer_state)
            mem = self._write(base, cache, i, first, patch + 1)
            out = {f"weight.{l}": w for l, w in enumerate(mem["weights"])}
            out.update({f"momentum.{l}": m for l, m in enumerate(mem["momentum"])})
            out.update({stream: cache[f"latent.{i}.{stream}"] for stream in layer.conv_streams})
            if layer.carries_window:
                out["window_rows"], out["window_valid"] = layer.window_carry(
                    layer_state["window_rows"], layer_state["window_valid"], cache[f"latent.{i}.rows"], patch + 1)
            new.update({layer_state_name(i, k): v for k, v in out.items()})
        return new

    def chunk(self, chunk, cache):
        """(memory_chunks > 1) Chunk `chunk` [B] is complete: write it into the chunk memory, which the
        next chunk's patches read."""
        span = chunk_span(self.cfg)
        new = {}
        for i, layer in enumerate(self.model.latent.layers):
            mem = self._write(self._chunk_memory(cache, i), cache, i, chunk * span, (chunk + 1) * span)
            for l in range(layer.memory.depth):
                new[f"chunk.{i}.weight.{l}"] = mem["weights"][l]
                new[f"chunk.{i}.momentum.{l}"] = mem["momentum"][l]
        return new
