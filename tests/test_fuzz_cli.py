"""Fuzzed command lines: random combinations of every command's options, values from pools of good,
bad and odd ones (missing paths, files where folders belong, names with newlines or markup, negative,
huge, NaN and non-numeric numbers, unknown options, stdin), called in this process; a few through real
subprocesses. Every call exits 0 or prints exactly one `error: ...` line and exits non-zero: no
traceback, no internal error, no hang, and no temporary file left behind.

Pools keep successful runs short (small byte and step counts); a valid source for neat-export and other
precisions for neat-bench are left out, since those start a full export (tests/test_export.py runs them).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import strategies as st

from neat_edge.tools import bench_cli, cli, export_cli
from tests.fuzzing import assert_cli_outcome, fuzz, invoke, outcome, sizes

INTS = ["-1", "0", "1", "2", "3", "99999999999999999999", "x", "nan", "1e3", "", "0x10", "٣"]
FLOATS = ["-1", "0", "0.5", "1", "nan", "inf", "-inf", "1e309", "x", ""]
TEXTS = ["", "x", "a b", "line\nbreak", "[/bold]", "[red]x[/red]", "é", "\udcff", "-", "--", "%s", "{}"]


@pytest.fixture(scope="module")
def places(bundle_dir, tmp_path_factory):
    """Named paths the pools draw from: the bundle, a small text file, a binary file, an empty folder..."""
    root = tmp_path_factory.mktemp("cli")
    (root / "small.txt").write_bytes(b"def f(x):\n    return x + 1\n" * 20)
    (root / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (root / "empty").mkdir()
    (root / "fewshot.json").write_text('["def f(x): return x", "import os"]')
    (root / "bad.json").write_text("[1, 2")
    (root / "state.safetensors").write_bytes(b"\0" * 40)
    return {"bundle": str(bundle_dir), "small": str(root / "small.txt"), "binary": str(root / "binary.bin"),
            "empty": str(root / "empty"), "missing": str(root / "missing" / "x"), "fewshot": str(root / "fewshot.json"),
            "badjson": str(root / "bad.json"), "badstate": str(root / "state.safetensors"), "odd": str(root / "a\nb[/x]"),
            "root": str(root), "out": str(root / "out")}


PATHS = ["bundle", "small", "binary", "empty", "missing", "odd", "root"]
OUTS = ["out", "missing", "empty", "small", "odd"]


def opt(name, values):
    return name, values


# command -> (positional pools, option pools); a pool entry that names a place is replaced by its path
COMMANDS = {
    ("neat", "run"): ([PATHS, TEXTS], [
        opt("--max-bytes", ["0", "1", "3", "-1", "99999999999999999999", "x", ""]), opt("--backend",
        ["onnxruntime", "torch", "onnxruntime:cuda", "coreml", "tensorrt", "x", "", "onnxruntime:"]),
        opt("--prompt-file", ["small", "binary", "missing", "empty", "-"]), opt("--state", ["badstate", "out", "empty",
        "missing"]), opt("--temperature", FLOATS), opt("--seed", INTS), opt("--dispatch", ["none", "classifier",
        "expert:python", "expert:python=0.5,prose=0.5", "expert:nope", "fewshot:fewshot", "fewshot:badjson",
        "fewshot:missing", "x", "expert:python=nan"]), opt("--dispatch-bytes", INTS), opt("--verbose", None),
        opt("--json", OUTS), opt("--images-dir", OUTS), opt("--image-scale", INTS)]),
    ("neat", "info"): ([PATHS + ["tiny", "default", "nope"]], [opt("--json", OUTS)]),
    ("neat", "experts"): ([PATHS], [opt("--json", OUTS)]),
    ("neat", "eval"): ([PATHS], [
        opt("--data", ["small", "binary", "missing", "empty", "bundle"]), opt("--memory", ["carry", "reset-each-segment",
        "x"]), opt("--split", ["all", "heldout", "train", "x"]), opt("--backend", ["onnxruntime", "torch", "x",
        "coreml"]), opt("--max-bytes", ["1", "64", "0", "-1", "x"]), opt("--min-doc-bytes", INTS),
        opt("--no-baselines", None), opt("--json", OUTS)]),
    ("neat", "parity"): ([PATHS], [
        opt("--backends", ["onnxruntime", "torch", "all", "", ",", "x", "onnxruntime,x"]), opt("--segments",
        ["1", "2", "0", "-1", "x"]), opt("--corpus", ["small", "binary", "missing", "empty"]), opt("--tolerance", FLOATS),
        opt("--bpb-tolerance", FLOATS), opt("--reference", ["torch", "onnxruntime", "x"]), opt("--json", OUTS)]),
    ("neat", "profile"): ([["bundle", "missing", "small", "empty", "nope"]], [
        opt("--segments", ["1", "0", "x"]), opt("--warmup", ["0", "-1"]), opt("--batch", ["1", "0"]),
        opt("--device", ["cpu", "cuda", "x"]), opt("--data", ["small", "missing"])]),
    ("neat", "train"): ([[]], [
        opt("--data", ["small", "missing", "empty", "binary"]), opt("--out", OUTS), opt("--preset", ["nope", "", "tiny"]),
        opt("--steps", ["1", "0", "-1", "x"]), opt("--batch-size", ["1", "0", "x"]), opt("--segments", ["1", "0"]),
        opt("--lr", FLOATS), opt("--device", ["cpu", "cuda", "x"]), opt("--precision", ["auto", "fp32", "bf16", "x"]),
        opt("--max-minutes", FLOATS), opt("--resume", None), opt("--config", ["small", "missing", "badjson"]),
        opt("--expert", TEXTS), opt("--base", ["bundle", "missing", "small"]), opt("--eval-every", ["0", "1", "-1"]),
        opt("--objective", ["nll", "reinforce", "x"])]),
    ("neat", "mvot-eval"): ([PATHS], [opt("--episodes", ["1", "0", "-1", "x"]), opt("--backend", ["onnxruntime",
                                                                                           "torch", "x"]),
                                      opt("--json", OUTS)]),
    ("neat-export",): ([[]], [
        opt("--out", OUTS), opt("--target", ["onnx", "coreml", "tensorrt", "all", "x", ""]), opt("--precision",
        ["fp32", "fp16", "int8", "palette4", "x", ""]), opt("--checkpoint", ["missing", "small", "empty", "bundle", "odd"]),
        opt("--calibration", ["small", "missing", "empty"]), opt("--calibration-method", ["minmax", "entropy", "x"]),
        opt("--stateful", None), opt("--segments", INTS), opt("--tolerance", FLOATS), opt("--no-verify", None)]),
    ("neat-bench",): ([PATHS + ["nope"]], [
        opt("--backends", ["torch", "onnxruntime", "x", "", "torch:cuda", "coreml"]), opt("--precisions", ["fp32", "x",
        ""]), opt("--runs", ["1", "0", "x"]), opt("--warmup", ["0", "-1"]), opt("--segments", ["1", "0"]),
        opt("--generate-bytes", ["1", "0"]), opt("--dispatch-generate-bytes", ["0", "1", "-1"]), opt("--segment-len",
        ["1", "8", "0", "100000"]), opt("--batch", ["1", "2", "0"]), opt("--threads", ["1", "0"]), opt("--data",
        ["small", "missing"]), opt("--json", OUTS)]),
    ("neat-bench", "memory"): ([[]], [
        opt("--dim", ["-1", "0", "3", "8", "x"]), opt("--heads", ["-1", "0", "1", "2", "3"]), opt("--chunk", ["-1", "0",
        "1", "4", "x"]), opt("--tokens", ["-5", "0", "1", "8"]), opt("--depth", ["-1", "0", "1", "2", "9"]),
        opt("--expansion", ["-1", "0", "1", "2"]), opt("--batch", ["-1", "0", "1"]), opt("--runs", ["1", "0"]),
        opt("--warmup", ["0"]), opt("--peer-runs", ["1", "0"]), opt("--json", OUTS)]),
}
REQUIRED = {  # options that keep a valid run short when the pool did not draw them
    ("neat", "run"): ["--max-bytes", "2"], ("neat", "parity"): ["--segments", "2"], ("neat", "eval"): ["--max-bytes", "64"],
    ("neat-bench",): ["--runs", "1", "--segments", "1", "--generate-bytes", "1", "--dispatch-generate-bytes", "0",
                      "--warmup", "0"],
    ("neat-export",): ["--checkpoint", "missing"], ("neat", "profile"): ["--segments", "1"],
    ("neat", "train"): ["--steps", "1", "--batch-size", "1", "--segments", "1", "--eval-every", "0"],
    ("neat-bench", "memory"): ["--dim", "8", "--heads", "2", "--chunk", "4", "--tokens", "8", "--runs", "1",
                               "--peer-runs", "1", "--warmup", "0"],
    ("neat", "mvot-eval"): ["--episodes", "1"],
}
MAINS = {"neat": cli.main, "neat-export": export_cli.main, "neat-bench": bench_cli.main}


# Commands whose successful run takes many seconds are given only paths that are not bundles, so they fail
# after parsing: a parity run (~15 s) in CI, a visual-task evaluation (~100 s per episode) always
# (tests/test_mvot.py runs it).
SLOW_WHEN_VALID = {("neat", "parity"), ("neat", "mvot-eval")}
NEVER_VALID = {("neat", "mvot-eval")}


@st.composite
def command_lines(draw, slow: bool = False):
    command = draw(st.sampled_from(sorted(COMMANDS)))
    positional, options = COMMANDS[command]
    if command in NEVER_VALID or (command in SLOW_WHEN_VALID and not slow):
        positional = [[p for p in pool if p != "bundle"] for pool in positional]
    args = [draw(st.sampled_from(pool)) for pool in positional if pool and draw(st.integers(0, 5))]
    chosen = draw(st.lists(st.sampled_from(options), max_size=5))
    for name, values in chosen:
        args += [name] if values is None else [name, draw(st.sampled_from(values))]
    if draw(st.integers(0, 7)) == 0:
        # never --debug: it shows tracebacks on purpose
        args.insert(draw(st.integers(0, len(args))), draw(st.sampled_from(["--bogus", "-x", "--", "--help"])))
    if draw(st.integers(0, 9)) == 0 and args:
        args.pop(draw(st.integers(0, len(args) - 1)))  # an option left without its value, or a lost argument
    given = {a for a in args if a.startswith("--")}
    required = REQUIRED.get(command, [])
    for i in range(0, len(required), 2):
        if required[i] not in given:
            args += required[i : i + 2]
    stdin = draw(st.binary(max_size=300)) if "-" in args else b""
    return command, args, stdin


def resolve(args, places):
    out = []
    for a in args:
        name, sep, rest = a.partition(":")
        if a in places:
            out.append(places[a])
        elif sep and rest in places and name in ("fewshot",):
            out.append(f"{name}:{places[rest]}")
        else:
            out.append(a)
    return out


def leftovers(root: Path) -> list[str]:
    """Temporary files of an atomic write that a failed command left behind."""
    return [str(p) for p in root.rglob("*.tmp")] + [str(p) for p in root.rglob("*.partial")]


@sizes(ci=200, slow=2000)
def test_fuzz_command_lines(places, examples, slow):
    def check(case):
        command, args, stdin = case
        argv = [command[0], *command[1:], *resolve(args, places)]
        code, out, err = invoke(MAINS[command[0]], argv, stdin)
        outcome("cli", refused=code != 0)
        assert_cli_outcome(code, out, err, argv)
        if command == ("neat", "run") and code == 0 and "--help" not in argv:
            assert out.endswith(b"\n")
        assert not leftovers(Path(places["root"])), argv

    fuzz("cli", command_lines(slow), check, examples, slow)


@sizes(ci=4, slow=40)
def test_fuzz_command_lines_in_real_processes(places, examples, slow):
    """The same command lines as a user runs them: a real process, its real exit code and stderr."""
    bindir = Path(sys.executable).parent

    def check(case):
        command, args, stdin = case
        exe = str(bindir / command[0])
        argv = [exe, *command[1:], *resolve(args, places)]
        env = {**os.environ, "COLUMNS": "100"}
        proc = subprocess.run([a.encode("utf-8", "surrogateescape") for a in argv], input=stdin, capture_output=True,
                              timeout=600, env=env)
        err = proc.stderr.decode("utf-8", "replace")
        outcome("cli", refused=proc.returncode != 0)
        assert proc.returncode >= 0, f"killed by signal {-proc.returncode}: {argv}"
        assert_cli_outcome(proc.returncode, proc.stdout, err, argv)

    fuzz("cli", command_lines(slow), check, examples, slow)
