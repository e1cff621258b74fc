"""Patch boundaries: the same plain numpy code serves training and every runtime.

Two patchers:
  * `segment_patches` — fixed-length patches over a segment (what the shipped model is trained with);
  * `EntropyPatcher` — BLT entropy patching (BLT §2.3, seeds 000/001): with H(x_i) the entropy of the
    entropy model's next-byte distribution at byte i, a new patch starts at i when
        H(x_i) > θ_g                        (global threshold), or
        H(x_i) − H(x_{i−1}) > θ_r           (approximate monotonicity constraint), or
        the current patch already has max_patch_len bytes.
    It is streaming: boundaries over `a` then `b` equal those over `a + b` (the patcher carries the
    previous entropy and the open patch's length). `find_threshold` picks θ_g for a target mean
    patch length.

The graph only ever sees `patch_ids` / `patch_mask`, so changing patchers never changes the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def segment_patches(n_bytes: int, patch_size: int, n_patches: int | None = None):
    """Fixed patches over a segment of n_bytes: (patch_ids [n_bytes] int64, patch_mask [P] float32).

    n_patches pads the mask to a fixed width (padding patches are masked out)."""
    ids = np.arange(n_bytes, dtype=np.int64) // patch_size
    used = int(ids[-1]) + 1 if n_bytes else 0
    width = used if n_patches is None else n_patches
    if width < used:
        raise ValueError(f"{n_bytes} bytes need {used} patches, only {width} allowed")
    mask = np.zeros(max(width, 1), dtype=np.float32)
    mask[:used] = 1.0
    return ids, mask


def ids_from_starts(starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean patch starts (starts[0] must be True) -> (patch_ids int64, patch_mask float32)."""
    if len(starts) and not starts[0]:
        raise ValueError("the first byte of a segment must start a patch")
    ids = np.cumsum(starts, dtype=np.int64) - 1
    return ids, np.ones(max(int(starts.sum()), 1), dtype=np.float32)


@dataclass
class PatcherState:
    prev_entropy: float | None = None  # H of the previous byte (None at the stream start)
    open_len: int = 0  # bytes in the currently open patch (0 = none open)


@dataclass(frozen=True)
class EntropyPatcher:
    threshold: float  # θ_g, nats
    relative_threshold: float | None = None  # θ_r, nats; None disables the monotonicity rule
    max_patch_len: int = 16

    def starts(self, entropies: np.ndarray, state: PatcherState | None = None):
        """Patch starts for the next bytes of a stream given their entropies -> (bool [n], new state)."""
        state = PatcherState() if state is None else state
        h = np.asarray(entropies, dtype=np.float64)
        n = len(h)
        if n == 0:
            return np.zeros(0, bool), state
        starts = h > self.threshold
        if self.relative_threshold is not None:
            prev = np.concatenate([[np.inf if state.prev_entropy is None else state.prev_entropy], h[:-1]])
            starts |= (h - prev) > self.relative_threshold
        if state.open_len == 0:
            starts[0] = True  # nothing open: the stream (or a forced cut) starts a patch
        # Enforce the maximum length: walk the gaps between rule-based starts (few, not per byte).
        forced = []
        run_start = -state.open_len if state.open_len else None  # start of the open patch
        for c in [*np.flatnonzero(starts).tolist(), n]:
            if run_start is not None:
                forced.extend(range(run_start + self.max_patch_len, c, self.max_patch_len))
            run_start = c
        starts[forced] = True
        last_start = int(np.flatnonzero(starts)[-1]) if starts.any() else None
        open_len = n - last_start if last_start is not None else state.open_len + n
        return starts, PatcherState(prev_entropy=float(h[-1]), open_len=open_len)


def mean_patch_length(starts: np.ndarray) -> float:
    return len(starts) / max(int(np.count_nonzero(starts)), 1)


def segmented_starts(patcher: EntropyPatcher, entropies: np.ndarray, segment_len: int | None) -> np.ndarray:
    """Patch starts when every segment of segment_len bytes also starts a patch (as in the session)."""
    if not segment_len:
        return patcher.starts(entropies)[0]
    parts, prev = [], None
    for a in range(0, len(entropies), segment_len):
        part, st = patcher.starts(entropies[a : a + segment_len], PatcherState(prev_entropy=prev))
        parts.append(part)
        prev = st.prev_entropy
    return np.concatenate(parts) if parts else np.zeros(0, bool)


def find_threshold(entropies: np.ndarray, target_mean_len: float, relative_threshold: float | None = None,
                   max_patch_len: int = 16, iters: int = 60, segment_len: int | None = None) -> EntropyPatcher:
    """Bisection on θ_g so the mean patch length over `entropies` hits target_mean_len (a higher θ_g
    gives fewer, longer patches; the mean is monotone in θ_g). segment_len counts the patch starts
    forced at segment starts."""
    if not 1.0 <= target_mean_len <= max_patch_len:
        raise ValueError(f"target mean patch length must be in [1, {max_patch_len}]")
    h = np.asarray(entropies, dtype=np.float64)
    lo, hi = float(h.min()) - 1.0, float(h.max()) + 1.0
    best = EntropyPatcher(hi, relative_threshold, max_patch_len)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        patcher = EntropyPatcher(mid, relative_threshold, max_patch_len)
        length = mean_patch_length(segmented_starts(patcher, h, segment_len))
        best = patcher
        if abs(length - target_mean_len) / target_mean_len < 1e-3:
            break
        if length < target_mean_len:
            lo = mid
        else:
            hi = mid
    return best
