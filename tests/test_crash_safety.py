"""SIGKILL in the middle of a write: a real child process (tests/crash_child.py) writes a first version of
a state file, a checkpoint or a bundle, starts on the second, and is killed at a chosen point. What is
left at the path is always a whole, readable version: the previous one, or (killed after the commit
point) the new one, never a half-written or mixed one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from neat_edge.bundle import open_bundle
from neat_edge.config import NeatConfig
from neat_edge.runtimes import open_session
from tests.fuzzing import clone_bundle, write_manifest

ROOT = Path(__file__).resolve().parent.parent
STREAM_A = b"first version of the stream: " * 9
STREAM_B = b"second version, never saved whole. " * 7
PROBE = b"\nwhat comes next"
MICRO = NeatConfig(name="micro", segment_len=32, context_len=8, d_local=32, local_heads=2, decoder_layers=1, d_model=48,
                   latent_heads=2, latent_layers=1, n_experts=2, image_codebook_size=16)  # a checkpoint in 1 MB


def run_and_kill(*args, point: str, timeout: float = 300) -> list[str]:
    """Start the child, wait until it reports reaching `point` ('AT point'), SIGKILL it; its stdout lines."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.crash_child", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, deadline = [], time.time() + timeout
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if line.startswith("AT "):
                os.kill(proc.pid, signal.SIGKILL)
                break
            assert time.time() < deadline, "the child never reached the kill point"
    finally:
        proc.kill()
        err = proc.stderr.read()
        proc.wait()
    assert f"AT {point}" in lines, (lines, err[-3000:])
    assert proc.returncode == -signal.SIGKILL
    return lines


@pytest.mark.parametrize("point", ["mid-write", "replace-1"])
def test_state_file_survives_a_kill_mid_save(bundle_dir, tmp_path, point):
    path = tmp_path / "stream.safetensors"
    lines = run_and_kill("state", point, path, bundle_dir, point=point)
    assert lines[0] == "V1"
    expected = open_session(bundle_dir)
    expected.score(STREAM_A)
    restored = open_session(bundle_dir)
    restored.load_state(path)  # the first version, whole
    assert restored.position == len(STREAM_A)
    np.testing.assert_array_equal(restored.score(PROBE), expected.score(PROBE))


def checkpoint_weights(path: Path) -> tuple[torch.Tensor, int]:
    """(one weight tensor, the trainer state's step) of a checkpoint directory, after recovery."""
    from neat_edge.fileio import recover
    from neat_edge.model.checkpoint import load_checkpoint

    model = load_checkpoint(path, svf=False)
    recover(path)
    step = json.loads((path / "trainer_state.json").read_text())["step"]
    return next(model.parameters()).detach().clone(), step


@pytest.mark.parametrize("point, version", [("mid-write", 1), pytest.param("replace-1", 1, marks=pytest.mark.slow),
                                            ("replace-3", 2)])
def test_checkpoint_survives_a_kill_mid_save(tmp_path, point, version):
    """Weights, config and trainer state are one commit: killed before its journal, the first version
    is there; killed after it, the next reader finishes the second. Never a mix of the two."""
    from neat_edge.model.checkpoint import build

    path = tmp_path / "run"
    lines = run_and_kill("checkpoint", point, path, point=point)
    assert "V1" in lines and "V2" not in lines
    weight, step = checkpoint_weights(path)
    first = next(build(MICRO).parameters()).detach()
    assert step == version
    torch.testing.assert_close(weight, first + 0.01 * (version - 1), rtol=0, atol=1e-6)
    assert not list(path.glob(".commit-journal*"))


@pytest.mark.parametrize("point", ["exchange-before", "exchange-after"])
def test_bundle_install_survives_a_kill(bundle_dir, tmp_path, point):
    """Installing a finished bundle over an old one: killed before or after the swap, the path holds a
    whole bundle that opens with every checksum right (the old one, or the new one)."""
    from neat_edge.fileio import exchange_paths

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    if not exchange_paths(tmp_path / "a", tmp_path / "b"):
        pytest.skip("this filesystem has no atomic exchange (install_bundle falls back to two renames)")
    out = clone_bundle(bundle_dir, tmp_path / "bundle")
    staged = clone_bundle(bundle_dir, tmp_path / ".bundle.x.partial")
    manifest = json.loads((staged / "neat.json").read_text())
    manifest["note"] = "the new bundle"
    write_manifest(staged, manifest)
    run_and_kill("install", point, out, staged, point=point)
    opened = open_bundle(out)
    assert opened.manifest.get("note") == (None if point == "exchange-before" else "the new bundle")
    open_session(out).score(PROBE)


@pytest.mark.slow
@pytest.mark.parametrize("after_s", [4.0, 12.0, 25.0])
def test_export_killed_midway_leaves_the_old_bundle(bundle_dir, tmp_path, after_s):
    """A real `neat-export` over an existing bundle, SIGKILLed after a while (imports, the ONNX export, the
    parity check, or done): the bundle at the path opens and every checksum holds."""
    out = clone_bundle(bundle_dir, tmp_path / "bundle")
    before = json.loads((out / "neat.json").read_text())["files"]
    exe = Path(sys.executable).parent / "neat-export"
    proc = subprocess.Popen([str(exe), "--preset", "tiny", "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(after_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    bundle = open_bundle(out)
    assert bundle.manifest["files"] == before or proc.returncode == 0
    open_session(out).score(PROBE)
