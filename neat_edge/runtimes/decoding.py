"""Incremental decoding on any backend: which decode graph runs for each new byte, with the caches as
state (model/decode.py holds the math; this is the data-dependent part, outside every graph).

For each new token b_i of a segment (i = its position), one graph runs:
  * i = S − 1: decode_commit (the segment is complete: its state is what the segment step leaves),
    then decode_start for the next segment;
  * b_{i+1} starts a new patch (fixed: every patch_size bytes; entropy: the BLT patcher's rules on the
    entropy model's next-byte entropy, itself decoded one byte at a time): decode_patch, then
    decode_chunk when that patch ended a memory chunk (memory_chunks > 1);
  * otherwise decode_byte.
A batch of streams runs in lockstep (same position); with entropy patching each stream closes its
patches on its own (decode_patch's `close`).
"""

from __future__ import annotations

import functools

import numpy as np

from neat_edge.config import NeatConfig
from neat_edge.patching import EntropyPatcher, PatcherState
from neat_edge.spec import CACHE_IN, CACHE_OUT, STATE_IN, STATE_OUT, SVF_IN, cache_from_state


@functools.lru_cache(maxsize=4096)
def _cache_input(output: str) -> str:
    """next_cache.X -> cache.X: what a graph returns is what the next one takes."""
    return CACHE_IN + output[len(CACHE_OUT):]


class DecodeGraphs:
    """The decode graphs of one bundle or model on one backend kind: name -> Backend, plus the
    entropy model's (entropy patching) and the image head's (MVoT)."""

    def __init__(self, graphs: dict, entropy: dict | None = None, image_head=None):
        self.graphs, self.entropy, self.image_head = graphs, entropy or {}, image_head
        # every cache a decode graph takes (decode_start makes the rest; cache_from_state says which)
        self.cache_names = sorted({n[len(CACHE_IN):] for g in graphs.values() for n in g.spec.input_names
                                   if n.startswith(CACHE_IN)})

    def run(self, name: str, feeds: dict, pool: CachePool | None = None) -> dict:
        """Run graph `name` on the feeds it takes. A backend that can keep values in its own form between
        steps (step_native: ONNX Runtime's OrtValues) returns the caches so, never copied to numpy; one
        that can run a stream's loop over pooled buffers (step_pooled) does so with `pool`."""
        backend = self.graphs[name] if name in self.graphs else self.entropy[name]
        pooled = getattr(backend, "step_pooled", None) if pool is not None else None
        if pooled is not None:
            return pooled(feeds, pool)
        native = getattr(backend, "step_native", None)
        if native is not None:
            return native(feeds, self._cache_outputs(backend))
        return backend.step({n: feeds[n] for n in backend.spec.input_names})

    @staticmethod
    def _cache_outputs(backend) -> frozenset:
        keep = getattr(backend, "_decode_cache_outputs", None)
        if keep is None:
            keep = frozenset(n for n in backend.spec.output_names if n.startswith((CACHE_OUT, SVF_IN)))
            backend._decode_cache_outputs = keep
        return keep


class CachePool:
    """What one stream's decode loop keeps bound between steps (a Decoder's; per batch size): per graph
    the backend's binding, made once (backend.pooled_binding), and per cache two buffers the graphs write
    in turn: a step reads a cache from one and writes it into the other (the spare), which the next step
    reads in place; nothing is allocated or copied per step."""

    def __init__(self, batch: int):
        self.batch = batch
        self._bindings: dict = {}
        self._pairs: dict = {}

    def binding(self, backend):
        found = self._bindings.get(backend)
        if found is None:
            found = self._bindings[backend] = backend.pooled_binding(self.batch)
        return found

    def spare(self, family: str, name: str, current, make, in_place: bool = False) -> object:
        """The buffer output `name` is written into: of its pair, the one that is not `current` (what the
        step reads for that cache, if anything); make() allocates the pair on first use. in_place (the
        graph writes that cache's row into its input's buffer, nothing else reading it after): `current`
        itself when it is one of the pair (never an array the caller handed in, like a copy of the state)."""
        pair = self._pairs.get((family, name))
        if pair is None:
            pair = self._pairs[(family, name)] = (make(), make())
        if in_place and (current is pair[0] or current is pair[1]):
            return current
        return pair[1] if pair[0] is current else pair[0]


class Decoder:
    """The decode state of `batch` streams: caches, position in the segment, open patch, and the
    next position's outputs. begin() starts a segment from a committed state; feed() advances by one
    token per stream and returns the new committed state when the segment completes."""

    def __init__(self, graphs: DecodeGraphs, config: NeatConfig, patcher: EntropyPatcher | None = None):
        self.graphs, self.config, self.patcher = graphs, config, patcher
        self.chunk_span = -(-config.max_patches_per_segment // config.memory_chunks)
        self.svf_z, self.svf_weights = None, {}
        self.pool: CachePool | None = None  # this stream's bound graphs and cache buffers (per batch size)

    # --- a segment --------------------------------------------------------------------------------
    def begin(self, state: dict, svf_z: np.ndarray, entropy_context: np.ndarray | None = None) -> None:
        """A new segment from the committed `state` (arrays [B, ...]); entropy_context [B, W_e] for
        entropy patching."""
        self.state = state
        batch = state["byte_context"].shape[0]
        if self.pool is None or self.pool.batch != batch:
            self.pool = CachePool(batch)
        if self.svf_z is None or not np.array_equal(self.svf_z, svf_z):  # the SVF weights for this z
            self.svf_z, self.svf_weights = svf_z.copy(), self.graphs.run("decode_svf", {"svf_z": svf_z}, self.pool)
        # every graph input by its name: the committed state, the SVF weights, the caches, the step's inputs
        self.inputs = {STATE_IN + k: v for k, v in state.items()}
        self.inputs.update(self.svf_weights)
        out = self.graphs.run("decode_start", self.inputs, self.pool)
        self._take(out)
        self.position = 0
        self.patch = np.zeros(batch, np.int64)
        self.patch_start = np.zeros(batch, np.int64)
        self.tokens = []  # this segment's tokens so far, [B] each
        if self.patcher is not None:
            out = self.graphs.run("entropy_decode_start", {STATE_IN + "byte_context": entropy_context}, self.pool)
            self.entropy_inputs = {_cache_input(k): v for k, v in out.items() if k.startswith(CACHE_OUT)}
            self.entropy_context = entropy_context
            # the first byte always starts a patch; what the relative rule compares with comes next
            self.entropies = [out["entropy"].astype(np.float32)]
            self.patcher_states = [PatcherState(None, 0) for _ in range(batch)]
            self._starts(out["entropy"])

    def _take(self, out: dict) -> None:
        self._update(out)
        for name in self.graphs.cache_names:  # copies: the state stays the committed one
            source = cache_from_state(name)
            if source:
                self.inputs[CACHE_IN + name] = np.array(self.state[source])

    def _update(self, out: dict) -> None:
        """A graph's outputs: caches become the next steps' inputs (next_cache.X -> cache.X)."""
        for name, value in out.items():
            if name.startswith(CACHE_OUT):
                self.inputs[_cache_input(name)] = value
        if "byte_logprobs" in out:
            self.logprobs, self.hidden = out["byte_logprobs"], out["hidden"]

    def _feeds(self, token: np.ndarray) -> dict:
        batch = token.shape[0]
        self.inputs.update({"token": token.reshape(batch, 1), "position": np.full(batch, self.position, np.int64),
                            "patch": self.patch, "patch_start": self.patch_start})
        return self.inputs

    def _starts(self, entropy: np.ndarray) -> np.ndarray:
        """Entropy patching: does the next byte start a patch, per stream (BLT rules, streaming)."""
        starts = np.zeros(len(entropy), bool)
        for b, h in enumerate(entropy):
            s, self.patcher_states[b] = self.patcher.starts(np.array([h], np.float64), self.patcher_states[b])
            starts[b] = s[0]
        return starts

    # --- one token per stream ---------------------------------------------------------------------
    def feed(self, token: np.ndarray) -> dict | None:
        """Advance every stream by token [B] (int64). Returns the new committed state when this token
        completed the segment (the caller then calls begin() with it), else None."""
        cfg, i = self.config, self.position
        token = np.asarray(token, np.int64).reshape(-1)
        self.tokens.append(token)
        feeds = self._feeds(token)
        if i == cfg.segment_len - 1:
            out = self.graphs.run("decode_commit", feeds, self.pool)
            return {k[len(STATE_OUT):]: v for k, v in out.items()}
        if self.patcher is None:
            if (i + 1) % cfg.patch_size:  # fixed patches: most bytes close none (no per-stream arrays)
                self._update(self.graphs.run("decode_byte", feeds, self.pool))
                self.position = i + 1
                return None
            starts = np.ones(token.shape[0], bool)
        else:
            self.entropy_inputs.update(token=feeds["token"], position=feeds["position"])
            out = self.graphs.run("entropy_decode_byte", self.entropy_inputs, self.pool)
            self.entropy_inputs.update({_cache_input(k): v for k, v in out.items() if k.startswith(CACHE_OUT)})
            self.entropies.append(out["entropy"].astype(np.float32))
            starts = self._starts(out["entropy"])
        if starts.any():
            feeds["close"] = starts.astype(np.float32)
            self._update(self.graphs.run("decode_patch", feeds, self.pool))
            if cfg.memory_chunks > 1:
                ended = starts & ((self.patch + 1) % self.chunk_span == 0)
                if ended.any():
                    feeds["chunk"] = np.where(ended, self.patch // self.chunk_span, -1)  # -1: an empty range
                    self._update(self.graphs.run("decode_chunk", feeds, self.pool))
            self.patch = self.patch + starts
            self.patch_start = np.where(starts, i + 1, self.patch_start)
        else:
            self._update(self.graphs.run("decode_byte", feeds, self.pool))
        self.position = i + 1
        return None

    @property
    def patches(self) -> np.ndarray:
        """Patches of the current segment so far (the open one included), per stream."""
        return self.patch + (self.position > 0)

    def entropy_state(self, committed: dict) -> dict:
        """(entropy patching) the patcher state after a completed segment, as the segment path leaves it:
        the entropy model's last W_e bytes and the entropy of the segment's last byte."""
        w = self.entropy_context.shape[1]
        seg = np.stack(self.tokens, axis=1)
        context = np.concatenate([self.entropy_context, seg], axis=1)[:, -w:]
        return {"entropy.byte_context": context, "entropy.prev": self.entropies[-1][-1:].copy()}

    def image_logits(self) -> np.ndarray:
        if self.graphs.image_head is None:
            from neat_edge.errors import NeatError

            raise NeatError("this bundle's decode graphs have no image head (re-export it)")
        return self.graphs.image_head.step({"hidden": self.hidden})["image_logits"]
