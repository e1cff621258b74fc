"""Where a session's patch boundaries come from (backend-agnostic, like the Session itself).

FixedPatches: every patch_size bytes. EntropyPatches: runs the BLT entropy graph on a segment's
bytes (on any Backend), then the EntropyPatcher rules; every segment starts a patch, so a segment's
patches never depend on how the stream was split into calls. Both keep their state as named numpy
arrays that the session commits, saves and loads together with the step graph's state.
"""

from __future__ import annotations

import numpy as np

from neat_edge.patching import EntropyPatcher, PatcherState, ids_from_starts, segment_patches
from neat_edge.runtimes.backend import Backend
from neat_edge.spec import STATE_IN, STATE_OUT


class FixedPatches:
    kind = "fixed"

    def __init__(self, patch_size: int):
        self.patch_size = patch_size

    def initial_state(self) -> dict[str, np.ndarray]:
        return {}

    def __call__(self, segment: bytes, state: dict[str, np.ndarray]):
        ids, mask = segment_patches(len(segment), self.patch_size)
        return ids, mask, state


class EntropyPatches:
    kind = "entropy"

    def __init__(self, backend: Backend, initial_context: np.ndarray, patcher: EntropyPatcher):
        self.backend, self.patcher = backend, patcher
        self._context = np.ascontiguousarray(initial_context)

    def initial_state(self) -> dict[str, np.ndarray]:
        return {"entropy.byte_context": self._context.copy(), "entropy.prev": np.full(1, np.nan, np.float32)}

    def entropies(self, segment: bytes, state: dict[str, np.ndarray]):
        out = self.backend.step({"bytes": np.frombuffer(segment, np.uint8).astype(np.int64)[None],
                                 STATE_IN + "byte_context": state["entropy.byte_context"]})
        return out["entropy"][0], out[STATE_OUT + "byte_context"]

    def __call__(self, segment: bytes, state: dict[str, np.ndarray]):
        entropy, context = self.entropies(segment, state)
        prev = float(state["entropy.prev"][0])
        starts, _ = self.patcher.starts(entropy, PatcherState(prev_entropy=None if np.isnan(prev) else prev))
        ids, mask = ids_from_starts(starts)
        return ids, mask, {"entropy.byte_context": context, "entropy.prev": entropy[-1:].astype(np.float32)}
