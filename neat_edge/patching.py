"""Patch boundaries for a segment: the same code serves training and every runtime.

The walking skeleton uses fixed-length patches; entropy patching (BLT) replaces `segment_patches`
without touching the graph, because the graph only ever sees `patch_ids` and `patch_mask`.
"""

from __future__ import annotations

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
