"""Small safetensors files that carry a digest of their own content: session states, experts, dispatch
heads. Tensors only ever go through safetensors (never pickle).

The digest (sha256 over every metadata entry and every tensor's name, dtype, shape and bytes) is stored
in the file's metadata, so a truncated, bit-flipped or spliced file is refused instead of silently
loading different numbers. A file is read once, as bytes: what is checked is what is used.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_numpy_bytes
from safetensors.numpy import save_file

from neat_edge.errors import NeatError
from neat_edge.fileio import atomic_write

DIGEST_KEY = "content_sha256"
MAX_FILE_BYTES = 4 << 30  # read whole into memory: a state, an expert or a head is far smaller


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
    """Write tensors + metadata + their digest atomically; a write that fails is one NeatError."""
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    meta = {**metadata, DIGEST_KEY: content_digest(tensors, metadata)}
    try:
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    except OSError as exc:
        raise NeatError(f"cannot write {what} {path}: {exc.strerror or exc}") from None


def read_tensors(path: str | Path, what: str, require_digest: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors, metadata) of a safetensors file, checked against its digest (files written before
    digests existed have none: accepted only when require_digest is False)."""
    path = Path(path)
    if not path.is_file():
        raise NeatError(f"{what} not found: {path}")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise NeatError(f"{what} {path} is too large ({path.stat().st_size / 1e9:.1f} GB) to be one")
        data = path.read_bytes()
        (header_len,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + header_len]) if 8 + header_len <= len(data) else None
        meta = (header.get("__metadata__") if isinstance(header, dict) else None) or {}
        tensors = load_numpy_bytes(data)
    except (SafetensorError, OSError, ValueError, TypeError, KeyError, struct.error, AttributeError) as exc:
        raise NeatError(f"corrupted {what} {path}: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") \
            from None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise NeatError(f"corrupted {what} {path}: bad metadata")
    digest = meta.get(DIGEST_KEY)
    if digest is None and require_digest:
        raise NeatError(f"corrupted {what} {path}: it carries no content digest")
    if digest is not None and digest != content_digest(tensors, meta):
        raise NeatError(f"corrupted {what} {path}: its content does not match its digest")
    return tensors, meta
