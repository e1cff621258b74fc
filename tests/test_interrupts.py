"""Ctrl-C anywhere — while the CLI loads (torch's import included), during an export, training or
generation — ends with `error: interrupted`, exit code 130, no traceback, and nothing half-written:
no staged `.partial` bundle, no temporary file, no state or checkpoint in between."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
NEAT, NEAT_EXPORT = str(BIN / "neat"), str(BIN / "neat-export")


def interrupt(args, after: float, cwd=None, timeout: float = 60) -> tuple[int, str]:
    """Run a command, send it SIGINT (what Ctrl-C sends) `after` seconds in; (exit code, stderr)."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"{args[:2]} did not stop within {timeout} s of SIGINT") from None
    return proc.returncode, err.decode("utf-8", "replace")


def assert_interrupted(code: int, err: str, args) -> None:
    assert "Traceback" not in err, (args, err[-3000:])
    assert code == 130, (args, code, err[-2000:])
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1] == "error: interrupted", (args, err[-2000:])


def half_written(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.endswith((".tmp", ".partial")) or ".old" in p.name or p.name.startswith(".commit"))


@pytest.mark.parametrize("after", [1.0, *(pytest.param(t, marks=pytest.mark.slow) for t in (0.4, 2.0))])
def test_interrupt_while_loading(bundle_dir, after):
    """SIGINT while the entry point imports typer, the commands and torch: the same clean exit."""
    args = [NEAT, "run", str(bundle_dir), "hello", "--max-bytes", "100000"]
    code, err = interrupt(args, after)
    assert_interrupted(code, err, args)


def test_interrupt_during_generation(bundle_dir, tmp_path):
    state = tmp_path / "state.safetensors"
    args = [NEAT, "run", str(bundle_dir), "hello", "--max-bytes", "1000000", "--state", str(state)]
    code, err = interrupt(args, 12)
    assert_interrupted(code, err, args)
    assert not state.exists() and half_written(tmp_path) == []


def test_interrupt_during_export(tmp_path):
    out = tmp_path / "bundle"
    args = [NEAT_EXPORT, "--target", "onnx", "--out", str(out), "--no-verify"]
    code, err = interrupt(args, 15)
    assert_interrupted(code, err, args)
    assert not out.exists() and half_written(tmp_path) == []


@pytest.mark.slow  # ~40 s: the training loop is only reached after torch and the data are loaded
def test_interrupt_during_training(tmp_path, corpus):
    data, out = tmp_path / "data.txt", tmp_path / "ckpt"
    data.write_bytes(corpus)
    args = [NEAT, "train", "--data", str(data), "--out", str(out), "--preset", "tiny", "--steps", "100000",
            "--batch-size", "2", "--save-every", "3"]
    code, err = interrupt(args, 20)
    assert_interrupted(code, err, args)
    assert half_written(tmp_path) == []
    if out.exists():  # a checkpoint saved before the interrupt is whole
        from neat_edge.model.checkpoint import load_checkpoint

        load_checkpoint(out)
