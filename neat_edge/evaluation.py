"""Bits-per-byte of real documents through the deployed session, with the memory ablation and the
classic compressors beside it.

Documents are streamed from their files in bounded memory, whatever their size. Each file is one
document scored from a fresh stream, segment by segment with the state carried
(`memory="carry"`), or with the Titans memory put back to M_0 after every segment while the short-term
context is kept (`memory="reset-each-segment"`): the difference is what the long-term memory buys.
`xz -9` and `bzip2 -9` compress the same files, one by one, for scale.
"""

from __future__ import annotations

import bz2
import lzma
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neat_edge.errors import NeatError
from neat_edge.fileio import READ_CHUNK, iter_file_chunks

MEMORY_MODES = ("carry", "reset-each-segment")
LN2 = math.log(2.0)


def open_eval_session(model_path: str | Path, backend: str | None = None):
    """A session on a bundle (any backend; default onnxruntime) or a checkpoint directory / preset /
    "default" (PyTorch; backend "torch" or "torch:cuda")."""
    from neat_edge.model.checkpoint import is_checkpoint_dir
    from neat_edge.runtimes import open_model_session, open_session

    path = Path(model_path)
    if (path / "neat.json").is_file():
        return open_session(path, backend=backend or "onnxruntime")
    if backend and backend.partition(":")[0] != "torch":
        raise NeatError(f"{model_path} is a checkpoint, not a bundle: it runs on backend 'torch' only "
                        f"(export it with `neat-export` to use '{backend}')")
    if not (is_checkpoint_dir(path) or str(model_path) in ("default", "tiny", "small", "base")):
        raise NeatError(f"{model_path} is neither a bundle (neat.json) nor a checkpoint directory")
    from neat_edge.model.checkpoint import load
    from neat_edge.model.entropy import load_patching

    model = load(model_path)
    device = (backend or "torch").partition(":")[2] or "cpu"
    patching = load_patching(path) if model.cfg.patching == "entropy" else None
    return open_model_session(model.to(device), patching=patching)


@dataclass(frozen=True)
class Document:
    """A file to evaluate, read in pieces when scored (never whole: a document may be larger than RAM)."""

    name: str
    path: Path
    size: int  # bytes evaluated: the file's size, or less where --max-bytes cut it

    def chunks(self, chunk: int = READ_CHUNK):
        return iter_file_chunks(self.path, chunk, limit=self.size)


def read_documents(files, max_bytes: int | None = None, min_bytes: int = 0) -> list[Document]:
    """The files in order as Documents, keeping files of at least min_bytes, until max_bytes in all
    (the last one cut to fit). Only sizes are read here."""
    docs, total = [], 0
    for f in files:
        size = Path(f).stat().st_size
        if size < max(min_bytes, 1):
            continue
        if max_bytes is not None:
            size = min(size, max_bytes - total)
        docs.append(Document(str(f), Path(f), size))
        total += size
        if max_bytes is not None and total >= max_bytes:
            break
    if not docs:
        raise NeatError("no documents to evaluate" + (f" (none has at least {min_bytes} bytes)" if min_bytes else ""))
    return docs


def _pieces(doc, chunk: int):
    return [doc] if isinstance(doc, (bytes, bytearray)) else doc.chunks(chunk)


def score_document(session, doc: Document | bytes, memory: str = "carry") -> float:
    """Total -log2 p of a document (a Document or bytes) from a fresh stream."""
    if memory not in MEMORY_MODES:
        raise NeatError(f"unknown --memory '{memory}' (choose from {', '.join(MEMORY_MODES)})")
    seg = session.config.segment_len
    session.reset()
    nats = 0.0
    for piece in _pieces(doc, seg * max(READ_CHUNK // seg, 1)):  # whole segments, so resets fall on boundaries
        for start in range(0, len(piece), seg):  # one segment per call, the log-probs summed at once
            nats -= float(np.sum(session.score(piece[start : start + seg]), dtype=np.float64))
            if memory == "reset-each-segment":
                session.reset_memory()
    return nats / LN2


def compressor_baselines(docs) -> dict:
    """Bits per byte of `xz -9` and `bzip2 -9`, each file compressed on its own (as each document is
    scored from a fresh stream), streamed: only the compressors' own buffers are held."""
    raw = sizes_xz = sizes_bz = 0
    for doc in docs:
        xz, bz = lzma.LZMACompressor(preset=9), bz2.BZ2Compressor(9)
        for piece in _pieces(doc, READ_CHUNK):
            raw += len(piece)
            sizes_xz += len(xz.compress(piece))
            sizes_bz += len(bz.compress(piece))
        sizes_xz += len(xz.flush())
        sizes_bz += len(bz.flush())
    sizes = {"xz -9": sizes_xz, "bzip2 -9": sizes_bz}
    return {name: {"bits_per_byte": 8 * size / raw, "compressed_bytes": size} for name, size in sizes.items()}


def evaluate_documents(session, docs, memory: str = "carry", on_document=None) -> dict:
    """Bits-per-byte of every document and of all of them together."""
    per_file, bits, start = [], 0.0, time.perf_counter()
    for doc in docs:
        doc_bits = score_document(session, doc, memory)
        bits += doc_bits
        per_file.append({"file": doc.name, "bytes": doc.size, "bits_per_byte": doc_bits / doc.size})
        if on_document:
            on_document(doc.size)
    seconds = time.perf_counter() - start
    total = sum(d.size for d in docs)
    return {"bits_per_byte": bits / total, "bytes": total, "documents": len(docs), "memory": memory,
            "seconds": round(seconds, 3), "bytes_per_second": round(total / max(seconds, 1e-9), 1),
            "per_file": per_file}
