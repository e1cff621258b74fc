"""Every read bounded (neat_edge/bounded.py): strict JSON, safetensors headers checked before any payload
is read, text inputs cut at what the command uses. Hostile inputs end in one NeatError, quickly, in
bounded memory; valid ones still round-trip. Property-based where it fits (hypothesis strategies that
reach deep nesting and huge counts, tests/fuzzing.py)."""

from __future__ import annotations

import json
import struct
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from neat_edge.bounded import (
    MAX_HEADER_BYTES,
    MAX_JSON_DEPTH,
    MAX_TENSORS,
    loads_json,
    read_head,
    read_heads,
    read_safetensors,
)
from neat_edge.errors import NeatError
from neat_edge.tensorfile import read_tensors, write_tensors
from tests.fuzzing import json_documents, safetensors_files

REFUSAL_SECONDS = 10
FAST = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


def sparse(path, header: dict, payload: int) -> None:
    """A safetensors file whose header is `header` and whose payload is a hole of `payload` bytes."""
    raw = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + payload)


# --- strict JSON ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, why", [
    ('{"a": 1, "a": 2}', "appears twice"), ('[NaN]', "NaN"), ('{"x": Infinity}', "Infinity"),
    ('[-Infinity]', "Infinity"), ('[1e999]', "out of range"), ("[" * 50_000 + "]" * 50_000, "nested 50000"),
    ('{"a": {"b": 1, "b": 1}}', "twice"), (b'{"a": "\xff"}', "valid JSON"), ("[1" + "0" * 5000 + "]", "valid JSON"),
])
def test_strict_json_refuses(text, why):
    with pytest.raises(NeatError, match=why):
        loads_json(text, "test document")


def test_brackets_inside_strings_are_not_nesting():
    deep_string = json.dumps({"a": "[" * 10_000, "b\\\"[[[": ["{" * 500]})
    assert loads_json(deep_string, "doc") == json.loads(deep_string)


@FAST
@given(json_documents())
def test_strict_json_agrees_with_json_or_refuses(doc):
    """Any document: the same value json.loads gives, or one NeatError (deep, duplicate, non-finite)."""
    text, depth, strict_ok = doc
    try:
        got = loads_json(text, "doc")
    except NeatError:
        assert not strict_ok or depth > MAX_JSON_DEPTH
        return
    assert strict_ok and depth <= MAX_JSON_DEPTH
    assert got == json.loads(text)


def test_depth_check_is_linear():
    start = time.perf_counter()
    with pytest.raises(NeatError, match="nested"):
        loads_json("[" * (8 << 20), "doc")
    assert time.perf_counter() - start < REFUSAL_SECONDS


# --- safetensors headers ---------------------------------------------------------------------------------
@FAST
@given(safetensors_files())
def test_hostile_headers_are_refused_before_any_payload(tmp_path_factory, case):
    """Random headers (deep, huge counts, bad dtypes / shapes / offsets, lengths past the file): a
    NeatError or the tensors, never another exception; memory stays at what the payload really is."""
    data, must_accept = case
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        tensors, _ = read_safetensors(path, "state file")
    except NeatError:
        assert not must_accept
        return
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 4 * len(data) + (1 << 20)
    assert all(isinstance(a, np.ndarray) for a in tensors.values())


@pytest.mark.parametrize("header, payload, why", [
    ({"t": {"dtype": "F32", "shape": [1 << 30], "data_offsets": [0, 4 << 30]}}, 4 << 30, "at most"),
    ({"t": {"dtype": "F32", "shape": [1 << 62, 1 << 62], "data_offsets": [0, 16]}}, 200, "needs"),
    ({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 6 << 30, "payload has"),
    ({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, 100, "shape"),
    ({"t": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}, 100, "dtype"),
    ({"t": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, 100, "shape"),
    ({"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
      "b": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]}}, 200, "overlap"),
    ({"__metadata__": {"k": 1}}, 100, "metadata"),
])
def test_sparse_claims_are_refused_fast(tmp_path, header, payload, why):
    path = tmp_path / "claim.safetensors"
    sparse(path, header, payload)
    start = time.perf_counter()
    with pytest.raises(NeatError, match=why):
        read_tensors(path, "state file", require_digest=False)
    assert time.perf_counter() - start < REFUSAL_SECONDS


def test_header_length_past_the_file_and_huge_counts(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 62) + b"{}")
    with pytest.raises(NeatError, match="header claims"):
        read_safetensors(path, "expert file")
    path.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{" + b" " * MAX_HEADER_BYTES)
    with pytest.raises(NeatError, match="header claims"):
        read_safetensors(path, "expert file")
    many = {f"t{i}": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]} for i in range(MAX_TENSORS + 1)}
    raw = json.dumps(many).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(NeatError, match="tensors"):
        read_safetensors(path, "expert file")
    deep = b"{" + b'"a":[' * 50_000 + b"]" * 50_000 + b"}"
    path.write_bytes(struct.pack("<Q", len(deep)) + deep)
    with pytest.raises(NeatError, match="nested"):
        read_safetensors(path, "expert file")


def test_roundtrip_and_digest(tmp_path):
    tensors = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([7], np.int64),
               "c": np.zeros((0, 5), np.uint8)}
    path = write_tensors(tmp_path / "t.safetensors", tensors, {"format": "x"}, "test file")
    got, meta = read_tensors(path, "test file")
    assert meta["format"] == "x" and set(got) == set(tensors)
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and np.array_equal(got[k], v)
    with pytest.raises(NeatError, match="at most"):
        read_tensors(path, "test file", max_bytes=8)


# --- text heads ------------------------------------------------------------------------------------------
def test_text_heads_read_only_what_is_used(tmp_path):
    big = tmp_path / "big.txt"
    with open(big, "wb") as fh:
        fh.write(b"hello world\n" * 100)
        fh.truncate(3 << 30)
    tracemalloc.start()
    head = read_head(big, "corpus", 4096)
    data, used = read_heads([big, big], "filler", 10_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert head.startswith(b"hello world\n" * 100) and len(head) == 4096 and len(data) == 10_000 and used == 1
    assert peak < 1 << 20
    with pytest.raises(NeatError, match="refused"):
        read_head(big, "few-shot file", 1 << 20, whole=True)


def test_command_readers_cut_at_their_use(tmp_path):
    from neat_edge.calibration.reader import read_calibration_files
    from neat_edge.export.verify import read_corpus
    from neat_edge.recall import load_filler
    from neat_edge.runtimes.dispatch import FEWSHOT_MAX_BYTES, read_examples

    big = tmp_path / "big.txt"
    with open(big, "wb") as fh:
        fh.write(b"x" * 10_000)
        fh.truncate(3 << 30)
    start = time.perf_counter()
    assert read_corpus(big, 2, 128)[0] == b"x" * 256
    with pytest.raises(NeatError, match="refused"):
        read_corpus(big, None, 128)  # the whole corpus would be scored: too large to read
    assert read_examples(big) == [b"x" * FEWSHOT_MAX_BYTES]
    big_json = tmp_path / "big.json"
    big_json.write_bytes(b"[]")
    with open(big_json, "r+b") as fh:
        fh.truncate(3 << 30)
    with pytest.raises(NeatError, match="refused"):
        read_examples(big_json)
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(NeatError, match="nested"):
        read_examples(tmp_path / "deep.json")
    (tmp_path / "odd.json").write_text(json.dumps(["\ud800x"]))
    assert read_examples(tmp_path / "odd.json")  # a lone surrogate: encoded, not a crash
    (tmp_path / "dup.json").write_text('{"a": 1, "a": 2}')
    with pytest.raises(NeatError, match="twice"):
        read_examples(tmp_path / "dup.json")
    assert len(read_calibration_files([big], per_file=1000)[0][1]) == 1000
    data, used = load_filler([big], limit=5000)
    assert len(data) == 5000 and used == 1
    assert time.perf_counter() - start < REFUSAL_SECONDS


def test_a_huge_limit_allocates_only_the_file(tmp_path):
    """`--segments 2147483647` asks read_corpus for 256 GB of a 13 KB file: no buffer of the limit's size."""
    from neat_edge.export.verify import read_corpus

    small = tmp_path / "small.txt"
    small.write_bytes(b"abc" * 100)
    assert read_head(small, "corpus", 1 << 40) == b"abc" * 100
    assert read_corpus(small, (1 << 31) - 1, 128)[0] == b"abc" * 100
