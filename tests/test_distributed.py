"""Distributed training (training/distributed.py) on the CPU with gloo, as CI runs it: torchrun ranks around the
one trainer loop. A 1-rank torchrun run gives today's weights bit for bit; 2 ranks train, save from rank 0 and
resume with any rank count."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from neat_edge.training.train import TrainOptions, train
from tests.test_training import MICRO, STDLIB_JSON

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _neat_train(args, tmp_path, torchrun_ranks: int | None = None):
    head = [sys.executable, "-m", "neat_edge.tools.cli"]
    if torchrun_ranks:
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun_ranks}",
                "-m", "neat_edge.tools.cli"]
    cfg = tmp_path / "micro.json"
    cfg.write_text(MICRO.to_json())
    cmd = [*head, "train", "--config", str(cfg), "--data", str(STDLIB_JSON), "--batch-size", "2", "--segments", "2",
           "--tbptt", "1", "--warmup", "1", "--eval-bytes", "1024", "--seed", "3", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _weights(path):
    return load_file(str(Path(path) / "model.safetensors"))


def test_one_rank_under_torchrun_gives_the_single_process_weights(tmp_path):
    opts = TrainOptions(steps=3, batch_size=2, segments=2, tbptt=1, warmup=1, eval_bytes=1024, seed=3)
    train(MICRO, [STDLIB_JSON], tmp_path / "plain", opts, show_progress=False)
    _neat_train(["--steps", "3", "--out", str(tmp_path / "ddp1")], tmp_path, torchrun_ranks=1)
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "ddp1")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    log = json.loads((tmp_path / "ddp1" / "train_log.json").read_text())
    assert log["ranks"] == {"world_size": 1, "strategy": "ddp"}


def test_two_ranks_train_save_on_rank0_and_resume_with_another_rank_count(tmp_path):
    out = tmp_path / "run"
    _neat_train(["--nproc", "2", "--steps", "3", "--out", str(out)], tmp_path)
    log = json.loads((out / "train_log.json").read_text())
    assert log["ranks"] == {"world_size": 2, "strategy": "ddp"} and log["steps_done"] == 3
    assert len(log["loss_curve"]) == 3 and all(v == v for v in log["loss_curve"])
    state = json.loads((out / "trainer_state.json").read_text())
    assert len(state["rank_rngs"]) == 1  # rank 1's sampler, saved by rank 0
    assert state["rank_rngs"][0] != state["numpy_rng"]  # each rank walks its own windows
    before = _weights(out)
    _neat_train(["--steps", "5", "--resume", "--out", str(out)], tmp_path)  # one process now
    log = json.loads((out / "train_log.json").read_text())
    assert log["steps_done"] == 5 and log["resumed_from_step"] == 3
    after = _weights(out)
    assert any(not (before[k] == after[k]).all() for k in before)


@pytest.mark.slow
def test_fsdp2_on_two_cpu_ranks_matches_ddp(tmp_path):
    _neat_train(["--nproc", "2", "--steps", "2", "--strategy", "ddp", "--out", str(tmp_path / "ddp")], tmp_path)
    _neat_train(["--nproc", "2", "--steps", "2", "--strategy", "fsdp", "--out", str(tmp_path / "fsdp")], tmp_path)
    a, b = _weights(tmp_path / "ddp"), _weights(tmp_path / "fsdp")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    _neat_train(["--nproc", "2", "--steps", "3", "--strategy", "fsdp", "--resume", "--out", str(tmp_path / "fsdp")],
                tmp_path)
    assert json.loads((tmp_path / "fsdp" / "train_log.json").read_text())["steps_done"] == 3


def test_bad_distributed_options_are_one_error_line(tmp_path):
    cfg = tmp_path / "micro.json"
    cfg.write_text(MICRO.to_json())
    for extra in (["--strategy", "zero9"], ["--entropy-model"], ["--data", str(tmp_path / "missing")]):
        proc = subprocess.run([sys.executable, "-m", "neat_edge.tools.cli", "train", "--config", str(cfg), "--data",
                               str(STDLIB_JSON), "--nproc", "2", "--out", str(tmp_path / "x"), *extra],
                              capture_output=True, text=True, env=ENV, timeout=120)
        assert proc.returncode != 0
        assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
