"""Small safetensors files that carry a digest of their own content: session states, experts, dispatch
heads. Tensors only ever go through safetensors (never pickle).

The digest (sha256 over every metadata entry and every tensor's name, dtype, shape and bytes) is stored
in the file's metadata, so a truncated, bit-flipped or spliced file is refused instead of silently
loading different numbers. A file is read once, header first (bounded.py: its length, depth, tensor
count and every offset checked against the file size before any payload is read), then each tensor into
an array of its checked size: what is checked is what is used, and a file claiming gigabytes costs
nothing to refuse.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save

from neat_edge.bounded import read_safetensors
from neat_edge.errors import NeatError
from neat_edge.fileio import atomic_write_bytes

DIGEST_KEY = "content_sha256"
MAX_FILE_BYTES = 256 << 20  # a state, an expert or a head is far smaller; callers pass their own tighter bound


def content_digest(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for key in sorted(k for k in metadata if k != DIGEST_KEY):
        digest.update(json.dumps([key, metadata[key]]).encode())
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        digest.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def write_tensors(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str], what: str) -> Path:
    """Write tensors + metadata + their digest atomically; a write that fails is one NeatError (a full
    disk: DiskFullError, the previous file intact). Serialised in memory first, so the write itself is
    a plain file write whose failure is an OSError with its errno, not a library's opaque error."""
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    meta = {**metadata, DIGEST_KEY: content_digest(tensors, metadata)}
    data = save(tensors, metadata=meta)
    try:
        return atomic_write_bytes(path, data)
    except NeatError:
        raise
    except OSError as exc:
        raise NeatError(f"cannot write {what} {path}: {exc.strerror or exc}") from None


def read_tensors(path: str | Path, what: str, require_digest: bool = True,
                 max_bytes: int = MAX_FILE_BYTES) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors, metadata) of a safetensors file, checked against its digest (files written before
    digests existed have none: accepted only when require_digest is False). max_bytes: the most tensor
    bytes a file of this kind holds; a header claiming more is refused before anything else is read."""
    path = Path(path)
    if not path.is_file():
        raise NeatError(f"{what} not found: {path}" if not path.exists() else f"{what} {path} is not a regular file")
    tensors, meta = read_safetensors(path, what, max_bytes)
    digest = meta.get(DIGEST_KEY)
    if digest is None and require_digest:
        raise NeatError(f"corrupted {what} {path}: it carries no content digest")
    if digest is not None and digest != content_digest(tensors, meta):
        raise NeatError(f"corrupted {what} {path}: its content does not match its digest")
    return tensors, meta
