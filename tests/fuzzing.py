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
