"""Shared by the fuzz tests: how many cases a run makes (CI or `slow`), a per-case hang guard, the case
counter the terminal summary prints, bundle clones that mutations cannot leak out of, and in-process CLI
calls that capture exit code, stdout and stderr.

Every fuzz case must end in a NeatError (from the API; one `error: ...` line and a non-zero exit from a
CLI) or in a result checked against the unmutated reference: no other exception, no hang, no crash.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import struct
import sys
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings

CASES: Counter = Counter()  # category -> cases run in this pytest process (printed by conftest)
OUTCOMES: Counter = Counter()  # (category, "refused" | "accepted") -> cases
CASE_SECONDS = 120  # one case longer than this is a hang


class Hang(Exception):
    pass


@contextlib.contextmanager
def hang_guard(seconds: int = CASE_SECONDS):
    """Fail the case (instead of blocking the suite) if it runs longer than `seconds`."""
    def alarm(*_):
        raise Hang(f"a fuzz case ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def fuzz(category: str, strategy, check, examples: int, slow: bool = False) -> None:
    """Run `check(case)` on `examples` cases drawn from `strategy` (hypothesis, shrinking on failure).
    CI runs are derandomized (the same cases every run); slow runs use a fixed seed of their own."""
    conf = settings(max_examples=examples, deadline=None, database=None, derandomize=not slow,
                    suppress_health_check=list(HealthCheck), print_blob=True)

    @conf
    @given(strategy)
    def run(case):
        CASES[category] += 1
        with hang_guard():
            check(case)

    (seed(20_240_611)(run) if slow else run)()


def outcome(category: str, refused: bool) -> None:
    OUTCOMES[category, "refused" if refused else "accepted"] += 1


def sizes(ci: int, slow: int):
    """pytest params: (examples, slow?) for the CI run and the `slow` run of one fuzz test."""
    import pytest

    return pytest.mark.parametrize("examples, slow", [(ci, False), pytest.param(slow, True, marks=pytest.mark.slow)],
                                   ids=["ci", "slow"])


# --- bundles -------------------------------------------------------------------------------------
def clone_bundle(src: Path, dst: Path) -> Path:
    """A copy of a bundle whose files are hard links (cheap): mutate only through replace_file /
    unlink, never by writing into a file in place (that would change the original too)."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, copy_function=os.link)
    (dst / "neat.json").unlink()
    shutil.copyfile(src / "neat.json", dst / "neat.json")
    return dst


def replace_file(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def write_manifest(bundle: Path, manifest) -> None:
    replace_file(bundle / "neat.json", json.dumps(manifest).encode())


# --- the CLIs, in this process -------------------------------------------------------------------
class _Stdin(io.BytesIO):
    @property
    def buffer(self):
        return self


def invoke(main, argv: list[str], stdin: bytes = b"") -> tuple[int, bytes, str]:
    """Call a CLI's main() as `argv` would from a shell: (exit code, stdout bytes, stderr text)."""
    out_bytes, err_bytes = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_bytes, encoding="utf-8", write_through=True)
    err = io.TextIOWrapper(err_bytes, encoding="utf-8", errors="backslashreplace", write_through=True)
    saved = sys.argv, sys.stdout, sys.stderr, sys.stdin
    sys.argv, sys.stdout, sys.stderr, sys.stdin = argv, out, err, _Stdin(stdin)
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv, sys.stdout, sys.stderr, sys.stdin = saved
    return code, out_bytes.getvalue(), err_bytes.getvalue().decode("utf-8", "replace")


def assert_cli_outcome(code: int, out: bytes, err: str, argv) -> None:
    """Exit 0, or a non-zero exit whose stderr ends in exactly one `error: ...` line (what the command
    printed before it failed, e.g. a table, may precede it; a bare command shows its help on stdout);
    never a traceback, never an internal error."""
    assert "Traceback" not in err, (argv, err)
    if code != 0 and not (code == 2 and not err.strip() and b"Usage:" in out):
        lines = [line for line in err.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        assert len(errors) == 1 and lines[-1] == errors[0] and lines[-1].startswith("error: "), (argv, code, err[-2000:])
        assert "internal error" not in lines[-1], (argv, lines[-1])


# --- strategies for the bounded readers (tests/test_bounded_reads.py) -------------------------------
def _nested(kinds: str, depth: int, leaf: str) -> str:
    """`leaf` inside `depth` levels of lists and objects (kinds cycles through 'l' and 'd')."""
    opens = "".join("[" if kinds[i % len(kinds)] == "l" else '{"k":' for i in range(depth))
    closes = "".join("]" if kinds[i % len(kinds)] == "l" else "}" for i in reversed(range(depth)))
    return opens + leaf + closes


def json_documents():
    """(text, nesting depth, strictly valid?) of JSON documents from flat to 50,000 levels deep, around
    the depth bound, with strings full of brackets and quotes, and with a duplicate key, a NaN, an
    Infinity or an out-of-range number spliced in."""
    from hypothesis import strategies as st

    from neat_edge.bounded import MAX_JSON_DEPTH

    leaves = st.one_of(st.integers(-(10**20), 10**20), st.floats(allow_nan=False, allow_infinity=False),
                       st.text(alphabet='[]{}"\\ab\n', max_size=30), st.booleans(), st.none())
    depths = st.one_of(st.integers(0, 8), st.integers(MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH + 2),
                       st.sampled_from([1000, 50_000]))

    @st.composite
    def build(draw):
        depth, leaf = draw(depths), json.dumps(draw(leaves))
        kinds = draw(st.text(alphabet="ld", min_size=1, max_size=6))
        flaw = draw(st.sampled_from(["", "", "dup", "nan", "inf", "big"]))
        spliced = {"": leaf, "dup": '{"a": 1, "a": 2}', "nan": "NaN", "inf": "-Infinity", "big": "1e400"}[flaw]
        if flaw:
            spliced = f"[{leaf}, {spliced}]"
        return _nested(kinds, depth, spliced), depth + (1 if flaw else 0), not flaw

    return build()


def safetensors_files():
    """(bytes, must be accepted?) of safetensors files: valid ones of a few tensors, and the same with
    one hostile change: a header length past the file (up to 2^64 - 1), a header nested deep or listing
    thousands of tensors, an unknown dtype, shapes with negative, boolean or 2^62 sizes, offsets that
    overlap, leave gaps or pass the end, a truncated payload, trailing bytes."""
    import numpy as np
    from hypothesis import strategies as st
    from safetensors.numpy import save

    dtypes = st.sampled_from([np.float32, np.int64, np.uint8, np.float16])
    shapes = st.lists(st.integers(0, 4), max_size=3)
    tensors = st.dictionaries(st.text(alphabet="abc.", min_size=1, max_size=6),
                              st.tuples(dtypes, shapes), min_size=1, max_size=4)

    @st.composite
    def build(draw):
        spec = draw(tensors)
        data = save({k: np.ones(s, d) for k, (d, s) in spec.items()}, metadata={"format": "x"})
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        change = draw(st.sampled_from(["none", "length", "deep", "count", "dtype", "shape", "offsets",
                                       "truncate", "append", "metadata"]))
        name = sorted(k for k in header if k != "__metadata__")[0]
        if change == "none":
            return data, True
        if change == "length":
            value = draw(st.one_of(st.integers(n + 9, 2**64 - 1), st.integers(0, max(n - 9, 0))))
            return struct.pack("<Q", value) + data[8:], False
        if change == "truncate":
            return data[: draw(st.integers(0, len(data) - 1))], False
        if change == "append":
            return data + b"\0" * draw(st.integers(1, 64)), False
        if change == "deep":
            header["__metadata__"] = _nested("ld", draw(st.integers(65, 20_000)), '"x"')
        elif change == "count":
            extra = draw(st.integers(1, 3000))
            header.update({f"z{i}": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]} for i in range(extra)})
        elif change == "dtype":
            header[name]["dtype"] = draw(st.sampled_from(["BF16", "F8_E4M3", "F33", "", "f32"]))
        elif change == "shape":
            header[name]["shape"] = draw(st.sampled_from([[-1], [True], [2**62, 2**62], ["4"], [1.5], [1] * 40]))
        elif change == "offsets":
            begin, end = header[name]["data_offsets"]
            header[name]["data_offsets"] = draw(st.sampled_from(
                [[begin, end + 4], [begin + 1, end + 1], [end, begin - 1], [0, 2**64], [-8, end], [begin, "x"]]))
        else:
            header["__metadata__"] = draw(st.sampled_from([{"k": 1}, ["x"], {"k": None}, {"k": {"a": "b"}}]))
        raw = json.dumps(header).encode()
        return struct.pack("<Q", len(raw)) + raw + data[8 + n :], False

    return build()
