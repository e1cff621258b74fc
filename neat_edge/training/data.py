"""Real bytes for training: files or directories, a deterministic held-out split, random windows."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neat_edge.errors import NeatError

HELDOUT_EVERY = 20  # one file in 20 (by a hash of its path) is held out


def _looks_binary(path: Path) -> bool:
    with open(path, "rb") as fh:
        return b"\0" in fh.read(4096)


def collect_files(paths) -> list[tuple[Path, str]]:
    """Expand files and directories (recursively; hidden dirs, caches and binary files skipped).

    Returns (path, key) pairs; the key (file name, or path relative to the directory given) decides
    the held-out split, so the split is the same on every machine."""
    files: list[tuple[Path, str]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_file():
            files.append((p, p.name))
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p).parts
                if any(part.startswith(".") or part == "__pycache__" for part in rel):
                    continue
                if f.is_file() and f.stat().st_size > 0 and not _looks_binary(f):
                    files.append((f, str(Path(p.name, *rel))))
        else:
            raise NeatError(f"data path not found: {p}")
    if not files:
        raise NeatError("no data files found in " + ", ".join(map(str, paths)))
    return files


def _is_heldout(key: str) -> bool:
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % HELDOUT_EVERY == 0


@dataclass
class ByteCorpus:
    train: np.ndarray  # uint8
    heldout: np.ndarray  # uint8
    files: int

    @classmethod
    def from_paths(cls, paths, heldout_fraction: float = 0.05) -> ByteCorpus:
        files = collect_files(paths)
        train, held = [], []
        for f, key in files:
            (held if len(files) > 1 and _is_heldout(key) else train).append(f.read_bytes())
        train_bytes, held_bytes = b"".join(train), b"".join(held)
        if not held_bytes:  # one file, or no file hashed into the held-out set: hold out the tail
            cut = int(len(train_bytes) * (1 - heldout_fraction))
            train_bytes, held_bytes = train_bytes[:cut], train_bytes[cut:]
        if len(train_bytes) < 1024:
            raise NeatError(f"too little training data ({len(train_bytes)} bytes); need at least 1 KB")
        return cls(np.frombuffer(train_bytes, dtype=np.uint8), np.frombuffer(held_bytes, dtype=np.uint8),
                   len(files))

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
        """`batch` random windows of `length` bytes from the training split -> int64 [batch, length]."""
        if len(self.train) <= length:
            raise NeatError(f"training data ({len(self.train)} bytes) is shorter than one window ({length})")
        starts = rng.integers(0, len(self.train) - length, size=batch)
        return np.stack([self.train[s : s + length] for s in starts]).astype(np.int64)
