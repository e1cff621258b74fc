"""Bounded readers for every file the project takes from elsewhere: strict JSON, safetensors headers,
and the head of a text file.

Each reader checks sizes before it reads, so a hostile file costs what the command uses, not what the
file claims: JSON is refused past a nesting depth (before Python's recursive parser sees it), with a
duplicate key (a manifest that says two things) or a NaN / Infinity; a safetensors header is read
like safetensors' own Rust reader reads one (header length, depth, tensor count, dtypes, shapes and
every offset checked against the file size) before a byte of payload is touched, and the payload is
then read tensor by tensor into arrays of the checked size. Text inputs are read up to the bytes a
command uses and no further.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neat_edge.errors import NeatError

MAX_JSON_DEPTH = 64  # a manifest nests ~8 deep; json's C parser recurses and ends in RecursionError near 1000
MAX_HEADER_BYTES = 16 << 20  # a header of 65536 tensors is ~6 MB (safetensors' own limit is 100 MB)
MAX_TENSORS = 1 << 16  # the largest checkpoint here has a few hundred; a state a few dozen
MAX_RANK = 16
MAX_PAYLOAD_BYTES = 1 << 30  # default cap on what read_safetensors loads into memory (callers pass tighter)
_ESCAPE = re.compile(rb"\\.", re.S)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_NESTING = np.zeros(256, np.int8)
_NESTING[[ord("["), ord("{")]], _NESTING[[ord("]"), ord("}")]] = 1, -1
# safetensors dtype -> little-endian numpy dtype (BF16 and FP8 have no numpy dtype: refused by name)
SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
                      "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}


# --- strict JSON ----------------------------------------------------------------------------------
def json_depth(raw: bytes, bound: int = MAX_JSON_DEPTH) -> int:
    """The deepest nesting of [ and { in a JSON text (brackets inside strings do not count), in one
    linear pass: never recursion, whatever the input. 0 when it cannot exceed `bound`."""
    if raw.count(b"[") + raw.count(b"{") <= bound:
        return 0  # cannot be deeper than the bound: the common case costs two counts
    # Outside strings only: drop escapes (an escaped quote never ends a string), then every other piece
    # between quotes is inside one. Bytes in, C-speed steps only: ~0.1 s per MB at worst.
    outside = b"".join(_ESCAPE.sub(b"", raw).split(b'"')[::2])
    marks = np.frombuffer(outside.translate(None, _NOT_BRACKETS), np.uint8)
    return int(np.cumsum(_NESTING[marks], dtype=np.int32).max()) if marks.size else 0


def _pairs(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key[:60]!r} appears twice")
        out[key] = value
    return out


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range")
    return value


def loads_json(data: bytes | str, what: str, max_depth: int = MAX_JSON_DEPTH):
    """Parse JSON strictly: at most max_depth levels of nesting, no key twice in one object, only finite
    numbers (no NaN, Infinity or 1e999). Any refusal is one NeatError naming `what`."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    depth = json_depth(raw, max_depth)
    if depth > max_depth:
        raise NeatError(f"{what} is refused: JSON nested {depth} levels deep (at most {max_depth})")
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_pairs, parse_constant=_no_constant,
                          parse_float=_finite)
    except RecursionError:  # unreachable after the depth bound; kept so no input can reach a traceback
        raise NeatError(f"{what} is refused: JSON nested too deep") from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, a duplicate key, NaN, an over-long integer
        raise NeatError(f"{what} is not valid JSON: {str(exc).splitlines()[0][:200]}") from None


def read_json_file(path: str | Path, what: str, max_bytes: int) -> object:
    """A JSON file of at most max_bytes (checked before reading), parsed strictly."""
    return loads_json(read_head(path, what, max_bytes, whole=True), f"{what} {path}")


# --- bounded file heads ---------------------------------------------------------------------------
def read_head(path: str | Path, what: str, limit: int, whole: bool = False) -> bytes:
    """At most `limit` bytes from the start of a regular file (a FIFO, a device or a folder is refused).
    whole=True: the file must fit in `limit` bytes, else it is refused unread."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the open; a device never ends
            raise NeatError(f"{what} {path} is not a regular file")
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if whole and size > limit:
                raise NeatError(f"{what} {path} is refused: {size:,} bytes, at most {limit:,} are read")
            data = fh.read(min(limit + 1 if whole else limit, size + 1))  # never a buffer of the limit's size
    except OSError as exc:
        raise NeatError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if whole and len(data) > limit:  # a stream that reported no size
        raise NeatError(f"{what} {path} is refused: over {limit:,} bytes")
    return data


def read_heads(paths: Iterable[str | Path], what: str, limit: int) -> tuple[bytes, int]:
    """The files' bytes concatenated, cut at `limit` bytes in all (later files are not opened once the
    limit is reached); and how many files contributed."""
    parts, left, used = [], limit, 0
    for p in paths:
        if left <= 0:
            break
        block = read_head(p, what, left)
        parts.append(block)
        left -= len(block)
        used += 1
    return b"".join(parts), used


# --- safetensors ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int  # offsets into the payload (after the header)
    end: int


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def parse_safetensors_header(fh, size: int, what: str, max_payload: int = MAX_PAYLOAD_BYTES,
                             max_tensors: int = MAX_TENSORS) -> tuple[list[TensorEntry], dict, int]:
    """(tensors sorted by offset, metadata, payload start) of an open safetensors file of `size` bytes.
    Reads only the 8-byte length and the header; refuses (one NeatError) a header longer than the file
    or than MAX_HEADER_BYTES, deeper than MAX_JSON_DEPTH, listing more than max_tensors tensors, an
    unknown dtype, a bad shape, offsets that overlap, leave gaps, disagree with dtype x shape or do not
    end exactly at the file's end, and a payload over max_payload bytes."""
    def refuse(why: str):
        raise NeatError(f"corrupted {what}: {why}")

    if size < 8:
        refuse(f"{size} bytes, shorter than a safetensors header")
    (n,) = struct.unpack("<Q", fh.read(8))
    if n > size - 8 or n > MAX_HEADER_BYTES:
        refuse(f"its header claims {n:,} bytes (the file has {size - 8:,} after the length; at most "
               f"{MAX_HEADER_BYTES:,} are read)")
    raw = fh.read(n)
    if len(raw) != n or not raw.startswith(b"{"):
        refuse("its header is not a JSON object")
    header = loads_json(raw, f"{what} header")
    if not isinstance(header, dict):
        refuse("its header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        refuse("bad metadata (must map names to strings)")
    if len(header) > max_tensors:
        refuse(f"its header lists {len(header):,} tensors (at most {max_tensors:,})")
    entries = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            refuse(f"tensor {name[:60]!r} is not described by dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            refuse(f"tensor {name[:60]!r} has dtype {str(dtype)[:20]!r} (reads {', '.join(SAFETENSORS_DTYPES)})")
        if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            refuse(f"tensor {name[:60]!r} has shape {str(shape)[:60]}: at most {MAX_RANK} sizes >= 0")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(
                isinstance(o, int) and not isinstance(o, bool) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            refuse(f"tensor {name[:60]!r} has data_offsets {str(offsets)[:60]}")
        dt = np.dtype(SAFETENSORS_DTYPES[dtype])
        if offsets[1] - offsets[0] != _numel(shape) * dt.itemsize:
            refuse(f"tensor {name[:60]!r}: its offsets span {offsets[1] - offsets[0]:,} bytes, "
                   f"{dtype} {shape} needs {_numel(shape) * dt.itemsize:,}")
        entries.append(TensorEntry(name, dt, tuple(shape), offsets[0], offsets[1]))
    entries.sort(key=lambda e: (e.begin, e.end))
    at = 0
    for e in entries:
        if e.begin != at:
            refuse(f"tensor {e.name[:60]!r} starts at {e.begin:,}, expected {at:,} (tensors overlap or leave gaps)")
        at = e.end
    if at != size - 8 - n:
        refuse(f"its tensors end at {at:,} bytes, the payload has {size - 8 - n:,}")
    if at > max_payload:
        refuse(f"it holds {at:,} bytes of tensors, more than one can (at most {max_payload:,}): refused unread")
    return entries, meta, 8 + n


def read_safetensors(path: str | Path, what: str, max_payload: int = MAX_PAYLOAD_BYTES,
                     max_tensors: int = MAX_TENSORS) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors, metadata) of a safetensors file: header checked first (parse_safetensors_header), then
    each tensor read into an array of its checked size (memory: the payload, never the file's claim)."""
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise NeatError(f"{what} {path} is not a regular file")
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            entries, meta, start = parse_safetensors_header(fh, st.st_size, f"{what} {path}", max_payload,
                                                            max_tensors)
            fh.seek(start)
            tensors = {}
            for e in entries:
                a = np.empty(e.shape, e.dtype)
                view = a.reshape(-1).view(np.uint8)
                if fh.readinto(view) != view.size:
                    raise NeatError(f"corrupted {what} {path}: it ends inside tensor {e.name[:60]!r}")
                tensors[e.name] = a
    except OSError as exc:
        raise NeatError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    return tensors, meta
