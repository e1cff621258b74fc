"""Real bytes for training: files or directories, a deterministic held-out split, streamed windows.

Files are memory-mapped, never read whole: a window is sliced out of the mapped pages it touches, so
a corpus larger than RAM trains the same way as a small one. The split is decided per file by a hash
of its name, so it is the same on every machine and in every order the paths are given.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neat_edge.errors import NeatError

HELDOUT_EVERY = 20  # one file in 20 (by a hash of its name) is held out
SPLITS = ("all", "train", "heldout")


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


def is_heldout(key: str) -> bool:
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % HELDOUT_EVERY == 0


def split_files(paths, split: str = "all") -> list[Path]:
    """The files of `paths` in one split ("all", "train" or "heldout"), by the corpus's own rule."""
    if split not in SPLITS:
        raise NeatError(f"unknown split '{split}' (choose from {', '.join(SPLITS)})")
    files = collect_files(paths)
    if split == "all":
        return [f for f, _ in files]
    return [f for f, key in files if is_heldout(key) == (split == "heldout")]


@dataclass
class ByteStream:
    """Bytes of many files (or file slices) seen as one memory-mapped sequence."""

    pieces: list[tuple[Path, int, int]] = field(default_factory=list)  # (file, start, end)

    def __post_init__(self):
        self._maps = [None] * len(self.pieces)
        self._ends = np.cumsum([end - start for _, start, end in self.pieces], dtype=np.int64)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def _piece(self, i: int) -> np.ndarray:
        if self._maps[i] is None:  # mapped on first use; the OS pages bytes in as windows touch them
            path, start, end = self.pieces[i]
            self._maps[i] = np.memmap(path, dtype=np.uint8, mode="r")[start:end]
        return self._maps[i]

    def read(self, start: int, length: int) -> np.ndarray:
        """`length` bytes from global offset `start` (crossing file boundaries as needed)."""
        out, pos = [], start
        i = int(np.searchsorted(self._ends, pos, side="right"))
        while length > 0 and i < len(self.pieces):
            lo = pos - (int(self._ends[i - 1]) if i else 0)
            chunk = self._piece(i)[lo : lo + length]
            out.append(chunk)
            pos, length, i = pos + len(chunk), length - len(chunk), i + 1
        return np.concatenate(out) if out else np.zeros(0, np.uint8)

    def array(self, max_bytes: int | None = None) -> np.ndarray:
        n = len(self) if max_bytes is None else min(len(self), max_bytes)
        return np.ascontiguousarray(self.read(0, n))


@dataclass
class ByteCorpus:
    train_stream: ByteStream
    heldout_stream: ByteStream
    files: int
    heldout_files: list[Path] = field(default_factory=list)

    @classmethod
    def from_paths(cls, paths, heldout_fraction: float = 0.05) -> ByteCorpus:
        files = collect_files(paths)
        train, held = [], []
        for f, key in files:
            (held if len(files) > 1 and is_heldout(key) else train).append((f, 0, f.stat().st_size))
        held_files = [f for f, _, _ in held]
        if not held:  # one file, or no file hashed into the held-out set: hold out the tail
            total = sum(end for _, _, end in train)
            cut, pos, kept = int(total * (1 - heldout_fraction)), 0, []
            for f, _, end in train:
                if pos + end <= cut:
                    kept.append((f, 0, end))
                elif pos >= cut:
                    held.append((f, 0, end))
                else:
                    kept.append((f, 0, cut - pos))
                    held.append((f, cut - pos, end))
                pos += end
            train = kept
        corpus = cls(ByteStream(train), ByteStream(held), len(files), held_files)
        if len(corpus.train_stream) < 1024:
            raise NeatError(f"too little training data ({len(corpus.train_stream)} bytes); need at least 1 KB")
        return corpus

    @property
    def train_bytes(self) -> int:
        return len(self.train_stream)

    @property
    def heldout_bytes(self) -> int:
        return len(self.heldout_stream)

    @property
    def train(self) -> np.ndarray:
        """The whole training split in memory (small corpora and tests only; training streams)."""
        return self.train_stream.array()

    @property
    def heldout(self) -> np.ndarray:
        return self.heldout_stream.array()

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
        """`batch` random windows of `length` bytes from the training split -> int64 [batch, length]."""
        if self.train_bytes <= length:
            raise NeatError(f"training data ({self.train_bytes} bytes) is shorter than one window ({length})")
        starts = rng.integers(0, self.train_bytes - length, size=batch)
        return np.stack([self.train_stream.read(int(s), length) for s in starts]).astype(np.int64)
