#!/usr/bin/env python3
"""Cut one large text into files of about CHUNK bytes, so that the held-out split (one file in twenty,
by a hash of its name: neat_edge/training/data.py) works on it.

    split_text.py SRC OUTDIR PREFIX [--index IDX] [--chunk BYTES]

SRC may be gzip- or dictzip-compressed (.gz, .dz). With --index (a dictd .index: word, offset, length in
dictd's base64), files are cut only where a dictionary entry starts; without it, only at a blank line.
A file ends at the first boundary at or after CHUNK bytes; the bytes are written unchanged, so the
files' concatenation is SRC. Output: OUTDIR/PREFIX-0000.txt, PREFIX-0001.txt, ...
"""

from __future__ import annotations

import argparse
import gzip
import re
from pathlib import Path

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + B64.index(c)
    return n


def read(path: Path) -> bytes:
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path).read() if gz else path.read_bytes()


def boundaries(data: bytes, index: Path | None) -> list[int]:
    if index is not None:
        starts = set()
        for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                starts.add(b64(parts[1]))
        return sorted(s for s in starts if 0 < s < len(data))
    return [m.end() for m in re.finditer(rb"\n[ \t]*\n", data)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("outdir", type=Path)
    ap.add_argument("prefix")
    ap.add_argument("--index", type=Path)
    ap.add_argument("--chunk", type=int, default=65536)
    a = ap.parse_args()
    data = read(a.src)
    a.outdir.mkdir(parents=True, exist_ok=True)
    cuts, last = [], 0
    for b in boundaries(data, a.index):
        if b - last >= a.chunk:
            cuts.append(b)
            last = b
    edges = [0, *cuts, len(data)]
    pieces = [(lo, hi) for lo, hi in zip(edges, edges[1:]) if hi > lo]
    for i, (lo, hi) in enumerate(pieces):
        (a.outdir / f"{a.prefix}-{i:04d}.txt").write_bytes(data[lo:hi])
    print(f"{a.src.name}: {len(data)} bytes -> {len(pieces)} files in {a.outdir}")


if __name__ == "__main__":
    main()
