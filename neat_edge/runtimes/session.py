"""Session: a byte stream over any Backend, with all state kept outside the graph.

The stream is cut into segments of `segment_len` bytes from its start. A full segment is run once
and its state committed; the trailing partial segment is scored with the current state but not
committed (the graph is causal, so its log-probs are the same as when the segment completes), and
is kept in the session until more bytes arrive. Hence `score(a); score(b)` equals `score(a + b)`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from neat_edge.config import NeatConfig
from neat_edge.errors import NeatError
from neat_edge.runtimes import validation
from neat_edge.runtimes.backend import Backend
from neat_edge.runtimes.patches import FixedPatches
from neat_edge.spec import STATE_IN, STATE_OUT
from neat_edge.tensorfile import DIGEST_KEY, read_tensors, write_tensors

STATE_FORMAT = "neat-session-state/2"  # /2: the file carries a digest of its content (tensorfile.py)
STATE_FORMATS = (STATE_FORMAT, "neat-session-state/1")  # /1 (no digest) is still read


def as_tokens(data) -> np.ndarray:
    """A stream piece as int64 tokens: bytes are bytes 0..255; an int array may also hold specials
    (BOS, BOI, ...) and MVoT image tokens (IMAGE_BASE + code)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(data), np.uint8).astype(np.int64)
    return np.asarray(data, np.int64).reshape(-1)


def join_stream(a, b):
    """a + b: bytes while both are bytes, otherwise an int64 token array."""
    if isinstance(a, (bytes, bytearray)) and isinstance(b, (bytes, bytearray)):
        return bytes(a) + bytes(b)
    return np.concatenate([as_tokens(a), as_tokens(b)])


def model_id(config: NeatConfig, initial_state: dict[str, np.ndarray]) -> str:
    """Identity of a model for saved states: its architecture and its learned initial state."""
    digest = hashlib.sha256(config.to_json().encode())
    for name in sorted(initial_state):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(initial_state[name]).tobytes())
    return digest.hexdigest()[:16]


class Session:
    def __init__(self, backend: Backend, config: NeatConfig, initial_state: dict[str, np.ndarray],
                 svf_z: np.ndarray | None = None, patches=None):
        self.backend, self.config = backend, config
        self.patches = FixedPatches(config.patch_size) if patches is None else patches
        self._initial = {k: np.ascontiguousarray(v) for k, v in initial_state.items()}
        self._initial_patch = self.patches.initial_state()
        self.model_id = model_id(config, {**self._initial, **self._initial_patch})
        rank = next(t.shape[0] for t in backend.spec.inputs if t.name == "svf_z")
        self.svf_z = np.ones(rank, np.float32) if svf_z is None else np.asarray(svf_z, np.float32)
        self.experts = None  # ExpertLibrary (neat_edge.experts), set by open_session / open_model_session
        self.image_decoder = None  # MVoT image-decoder Backend (codes -> pixels), set by the openers
        self.reset()

    # --- stream state ----------------------------------------------------------------------------
    def reset(self) -> None:
        self.state = {k: v.copy() for k, v in self._initial.items()}
        self.patch_state = {k: v.copy() for k, v in self._initial_patch.items()}
        self._pending = b""  # bytes of the current, incomplete segment (already scored)
        self.position = 0  # bytes consumed since the start of the stream
        self.committed_patches = 0  # patches in the committed (full) segments
        self._pending_patches = 0  # patches of the pending partial segment

    def reset_memory(self) -> None:
        """Forget the Titans long-term memory (its weights, momentum and convolution history) and
        keep the short-term context (recent bytes, the last latent): the memory ablation."""
        self.state.update({k: v.copy() for k, v in self._initial.items() if k.startswith("memory.")})

    @property
    def mean_patch_length(self) -> float:
        """Mean patch length (bytes) over everything this stream has consumed."""
        return self.position / max(self.committed_patches + self._pending_patches, 1)

    def run_segment(self, segment: bytes, state=None, patch_state=None, svf_z=None):
        """One step on `segment` from the current committed state (or the given state / patcher
        state / z), without advancing the stream: (graph outputs, next model state, next patcher
        state, patches used). No side effects."""
        validation.check_segment(self, segment, state, patch_state, svf_z)
        state = self.state if state is None else state
        ids, mask, patch_state = self.patches(segment, self.patch_state if patch_state is None else patch_state)
        feeds = {"bytes": as_tokens(segment)[None],
                 "patch_ids": ids[None], "patch_mask": mask[None], "svf_z": self.svf_z if svf_z is None else svf_z}
        feeds.update({STATE_IN + k: v for k, v in state.items()})
        out = self.backend.step(feeds)
        validation.check_outputs(out)
        return out, {k: out[STATE_OUT + k] for k in state}, patch_state, int(mask.sum())

    def snapshot(self) -> dict:
        """A copy of the stream (state, patcher state, pending bytes, counters) that later calls
        cannot touch: the first pass of dispatch runs on one, so the memory is left exactly as it was."""
        return {"state": {k: v.copy() for k, v in self.state.items()},
                "patch_state": {k: v.copy() for k, v in self.patch_state.items()},
                "pending": self._pending, "position": self.position,
                "patches": (self.committed_patches, self._pending_patches)}

    def restore(self, snap: dict) -> None:
        validation.check_snapshot(self, snap)
        self.state = {k: v.copy() for k, v in snap["state"].items()}
        self.patch_state = {k: v.copy() for k, v in snap["patch_state"].items()}
        self._pending, self.position = snap["pending"], snap["position"]
        self.committed_patches, self._pending_patches = snap["patches"]

    def dispatch(self, prompt: bytes, strategy: str = "classifier", **options):
        """Transformer² pass 1: choose the expert mixture for `prompt` (strategy: classifier,
        fewshot:FILE, expert:NAME[=w,...], none; see runtimes/dispatch.py), set svf_z to it and
        return the DispatchResult. The stream state is left untouched; pass 2 is score/generate."""
        from neat_edge.runtimes.dispatch import dispatch

        validation.check_dispatch(prompt, strategy, options)
        return dispatch(self, prompt, strategy, **options)

    def _commit_segment(self, segment: bytes):
        """Run a full segment and make its state the stream's state."""
        out, self.state, self.patch_state, n_patches = self.run_segment(segment)
        self.committed_patches += n_patches
        self._pending_patches = 0
        return out

    def _advance(self, data: bytes, keep_rows: bool = False):
        """Consume `data`; return log p of each byte (and full log-prob rows if keep_rows)."""
        seg_len = self.config.segment_len
        buf = join_stream(self._pending, bytes(data))
        scored = len(self._pending)  # bytes of buf already returned by an earlier call
        chosen, rows = [], []

        def collect(out, seg, lo):
            lp = out["byte_logprobs"][0]
            idx = as_tokens(seg)
            chosen.append(lp[np.arange(lo, len(seg)), idx[lo:]])
            if keep_rows:
                rows.append(lp[lo:])

        pos = 0
        while len(buf) - pos >= seg_len:
            seg = buf[pos : pos + seg_len]
            out = self._commit_segment(seg)
            collect(out, seg, max(scored - pos, 0))
            pos += seg_len
        rest = buf[pos:]
        if len(rest) > max(scored - pos, 0):
            out, _, _, self._pending_patches = self.run_segment(rest)  # partial: scored, not committed
            collect(out, rest, max(scored - pos, 0))
        self._pending = rest
        self.position += len(data)
        logp = np.concatenate(chosen) if chosen else np.zeros(0, np.float32)
        return (logp, np.concatenate(rows) if rows else np.zeros((0, self.config.vocab_size), np.float32)) \
            if keep_rows else logp

    def score(self, data: bytes) -> np.ndarray:
        """Natural-log probability of each byte of `data` given everything before it in the stream."""
        validation.check_bytes(data, "score")
        return self._advance(data)

    def score_with_distributions(self, data: bytes):
        """(log p of each byte, full log-prob rows [len(data), vocab]) — for parity and analysis."""
        validation.check_bytes(data, "score_with_distributions")
        return self._advance(data, keep_rows=True)

    def next_byte_logprobs(self) -> np.ndarray:
        """Log-probs [vocab] of the next byte of the stream (does not advance it)."""
        return self.next_outputs()["byte_logprobs"]

    def next_outputs(self) -> dict[str, np.ndarray]:
        """Every per-position output for the next position of the stream (byte_logprobs [vocab],
        image_logits [codebook]); does not advance it."""
        probe = join_stream(self._pending, b"\0")  # the probe is never seen: position len(pending) is causal
        out = self.run_segment(probe)[0]
        return {k: out[k][0, len(self._pending)] for k in ("byte_logprobs", "image_logits")}

    # --- generation ------------------------------------------------------------------------------
    def generate(self, prompt: bytes, max_new_bytes: int, temperature: float = 0.0,
                 seed: int | None = None, allow_images: bool = False, max_images: int = 16):
        """Consume `prompt`, then sample up to max_new_bytes bytes (greedy when temperature == 0).
        allow_images=True (MVoT): the model may also open an image; returns the interleaved list of text
        chunks (bytes) and images (uint8 arrays [H, W, 3]) instead (runtimes/images.py)."""
        validation.check_generate(prompt, max_new_bytes, temperature, seed, allow_images, max_images, self.config)
        if allow_images:
            from neat_edge.runtimes.images import generate_interleaved

            return generate_interleaved(self, prompt, max_new_bytes, temperature, seed, max_images)[0]
        if max_new_bytes < 0:
            raise NeatError("max_new_bytes must be >= 0")
        if temperature < 0:
            raise NeatError("temperature must be >= 0")
        rng = np.random.default_rng(seed)
        self.score(prompt)
        produced = bytearray()
        for _ in range(max_new_bytes):
            logp = self.next_byte_logprobs()[:256].astype(np.float64)  # bytes only, never specials
            if temperature == 0.0:
                byte = int(np.argmax(logp))
            else:
                p = np.exp((logp - logp.max()) / temperature)
                byte = int(rng.choice(256, p=p / p.sum()))
            produced.append(byte)
            self._append_known(bytes([byte]))
        return bytes(produced)

    def _append_known(self, data) -> None:
        """Advance by bytes (or tokens) whose scores are not needed: only completed segments are run."""
        self._pending = join_stream(self._pending, data)
        self.position += len(data)
        seg_len = self.config.segment_len
        while len(self._pending) >= seg_len:
            self._commit_segment(self._pending[:seg_len])
            self._pending = self._pending[seg_len:]
        if not isinstance(self._pending, bytes) and (self._pending < 256).all():
            self._pending = self._pending.astype(np.uint8).tobytes()  # only bytes left: back to bytes

    # --- persistence -----------------------------------------------------------------------------
    def save_state(self, path: str | Path) -> None:
        validation.check_path(path, "the state file")
        tensors = {STATE_IN + k: np.ascontiguousarray(v) for k, v in self.state.items()}
        tensors.update({"patcher." + k: np.ascontiguousarray(v) for k, v in self.patch_state.items()})
        if isinstance(self._pending, bytes):
            tensors["pending"] = np.frombuffer(self._pending + b"\0", np.uint8).copy()  # never empty
        else:  # a partial segment holding image tokens (MVoT)
            tensors["pending_tokens"] = np.append(self._pending, 0).astype(np.int64)
        meta = {"format": STATE_FORMAT, "model_id": self.model_id, "position": str(self.position),
                "pending": str(len(self._pending)), "patches": str(self.committed_patches)}
        write_tensors(path, tensors, meta, "state file")  # atomic, with a digest of the content

    def load_state(self, path: str | Path) -> None:
        """Continue the stream saved in `path`. Everything is checked before the session changes: the
        format and content digest, the model, every tensor's name, dtype and shape, finite values, the
        counters; a refused file leaves the session as it was."""
        validation.check_path(path, "the state file")
        path = Path(path)
        tensors, meta = read_tensors(path, "state file", require_digest=False)
        if meta.get("format") not in STATE_FORMATS:
            raise NeatError(f"{path} is not a NEAT session state this version reads (format "
                            f"{str(meta.get('format'))[:40]!r}; it reads {', '.join(STATE_FORMATS)})")
        if meta.get("format") == STATE_FORMAT and DIGEST_KEY not in meta:
            raise NeatError(f"corrupted state file {path}: it carries no content digest")
        if meta.get("model_id") != self.model_id:
            raise NeatError(f"state file {path} was saved by a different model "
                            f"(model id {str(meta.get('model_id'))[:40]}, this session's is {self.model_id})")
        state, patch_state = {}, {}
        expected = {"pending", "pending_tokens"}
        for prefix, initial, into in ((STATE_IN, self._initial, state), ("patcher.", self._initial_patch, patch_state)):
            for name, ref in initial.items():
                t = tensors.get(prefix + name)
                expected.add(prefix + name)
                if t is None or t.shape != ref.shape or t.dtype != ref.dtype:
                    raise NeatError(f"state file {path} is corrupted: tensor '{name}' is missing or malformed")
                if t.dtype.kind == "f" and not (np.isfinite(t).all() or (name == "entropy.prev" and np.isnan(t).all())):
                    raise NeatError(f"state file {path} is corrupted: tensor '{name}' holds NaN or infinite values")
                into[name] = t
        if set(tensors) - expected:
            raise NeatError(f"state file {path} is corrupted: unexpected tensor '{sorted(set(tensors) - expected)[0]}'")
        try:
            n_pending, position, patches = int(meta["pending"]), int(meta["position"]), int(meta["patches"])
        except (KeyError, ValueError):
            raise NeatError(f"state file {path} is corrupted: bad metadata") from None
        raw = tensors.get("pending_tokens", tensors.get("pending"))
        if (("pending" in tensors) == ("pending_tokens" in tensors) or raw.ndim != 1
                or raw.dtype != (np.int64 if "pending_tokens" in tensors else np.uint8)
                or len(raw) != n_pending + 1 or n_pending >= self.config.segment_len or n_pending < 0
                or patches < 0 or position < n_pending):
            raise NeatError(f"state file {path} is corrupted: bad pending bytes or counters")
        pending = raw[:n_pending].tobytes() if raw.dtype == np.uint8 else raw[:n_pending].astype(np.int64)
        validation.check_tokens(pending, self.config, f"state file {path}")
        self.state, self.patch_state, self._pending, self.position = state, patch_state, pending, position
        self.committed_patches, self._pending_patches = patches, 0
