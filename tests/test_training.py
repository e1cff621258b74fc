import json
import math
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from neat_edge.config import NeatConfig
from neat_edge.errors import NeatError
from neat_edge.model.checkpoint import load
from neat_edge.training.data import ByteCorpus, ByteStream, is_heldout, split_files
from neat_edge.training.train import TrainOptions, train

STDLIB_JSON = Path(sysconfig.get_paths()["stdlib"]) / "json"
MICRO = NeatConfig(name="micro", segment_len=32, patch_size=4, context_len=8, d_local=32, local_heads=2,
                   encoder_layers=1, decoder_layers=1, d_model=32, latent_heads=2, latent_layers=1,
                   memory_heads=2, n_experts=2, image_codebook_size=16)


def test_training_learns_and_writes_a_loadable_checkpoint(tmp_path):
    opts = TrainOptions(steps=40, batch_size=8, segments=2, lr=1e-2, warmup=5, eval_bytes=4096)
    result = train(MICRO, [STDLIB_JSON], tmp_path / "ckpt", opts, show_progress=False)
    curve = result["loss_curve"]
    assert curve[-1] < curve[0] - 0.5  # from ~ln(260) = 5.56 nats down
    assert math.isfinite(result["heldout_bits_per_byte"]) and result["heldout_bits_per_byte"] < 8
    log = json.loads((tmp_path / "ckpt" / "train_log.json").read_text())
    assert log["data"]["heldout_bytes"] > 0
    model = load(tmp_path / "ckpt")
    assert model.cfg == MICRO


def test_heldout_split_is_deterministic_and_disjoint():
    a = ByteCorpus.from_paths([STDLIB_JSON])
    b = ByteCorpus.from_paths([STDLIB_JSON])
    assert a.train.tobytes() == b.train.tobytes() and len(a.heldout) > 0
    assert len(a.train) + len(a.heldout) == sum(p.stat().st_size for p in STDLIB_JSON.rglob("*.py")
                                                 if "__pycache__" not in p.parts)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_run_and_another_seed_another(tmp_path):
    opts = TrainOptions(steps=4, batch_size=2, segments=2, warmup=1, eval_bytes=1024, seed=3)
    train(MICRO, [STDLIB_JSON], tmp_path / "a", opts, show_progress=False)
    train(MICRO, [STDLIB_JSON], tmp_path / "b", opts, show_progress=False)
    other = TrainOptions(**{**vars(opts), "seed": 4})
    train(MICRO, [STDLIB_JSON], tmp_path / "c", other, show_progress=False)
    a, b, c = (_weights(tmp_path / n) for n in "abc")
    assert _same(a, b)
    assert not _same(a, c)


def test_resume_from_checkpoint_equals_an_uninterrupted_run(tmp_path):
    full = TrainOptions(steps=6, batch_size=2, segments=3, tbptt=2, warmup=2, eval_bytes=1024, seed=1)
    log = train(MICRO, [STDLIB_JSON], tmp_path / "full", full, show_progress=False)
    first = TrainOptions(**{**vars(full), "steps": 6, "max_minutes": 1e-9})  # stops after one step
    part = train(MICRO, [STDLIB_JSON], tmp_path / "split", first, show_progress=False)
    assert part["stopped_early"] and part["steps_done"] == 1
    rest = train(MICRO, [STDLIB_JSON], tmp_path / "split", full, show_progress=False, resume=True)
    assert rest["resumed_from_step"] == 1 and rest["steps_done"] == 6
    assert _same(_weights(tmp_path / "full"), _weights(tmp_path / "split"))
    assert rest["loss_curve"] == log["loss_curve"]
    # the optimizer state itself went through safetensors: moments are there, by parameter name
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "split" / "trainer_state.safetensors"))
    assert any(k.endswith(".exp_avg_sq") for k in state) and "rng.torch" in state


def test_a_time_budget_ends_the_cosine_schedule_with_the_budget(tmp_path, monkeypatch):
    import types

    import neat_edge.training.train as train_module

    clock = iter(range(10**6))  # every step "takes" one second of the trainer's clock, whatever the machine's load
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    opts = TrainOptions(steps=100_000, batch_size=2, segments=2, tbptt=2, warmup=1, eval_bytes=1024, seed=1,
                        max_minutes=0.1, lr=1e-3)
    log = train(MICRO, [STDLIB_JSON], tmp_path / "t", opts, show_progress=False)
    assert log["stopped_early"] and log["steps_done"] == 7  # 6 s of budget, then the step that crosses it
    state = json.loads((tmp_path / "t" / "trainer_state.json").read_text())
    # by steps alone the rate would still be ~lr; the budget is spent, so the schedule is at its floor
    assert state["param_groups"][0]["lr"] == pytest.approx(opts.lr * opts.min_lr_ratio, rel=0.05)


def test_resume_without_trainer_state_is_a_clear_error(tmp_path):
    with pytest.raises(NeatError, match="no trainer state"):
        train(MICRO, [STDLIB_JSON], tmp_path / "nothing", TrainOptions(steps=1), show_progress=False, resume=True)


def test_bf16_autocast_trains_with_the_memory_update_in_fp32(tmp_path):
    opts = TrainOptions(steps=2, batch_size=2, segments=2, warmup=1, eval_bytes=1024, precision="bf16",
                        grad_checkpointing=True)
    result = train(MICRO, [STDLIB_JSON], tmp_path / "bf16", opts, show_progress=False)
    assert result["precision"] == "bf16" and math.isfinite(result["heldout_bits_per_byte"])
    from neat_edge.model.titans import NeuralMemory

    mem = NeuralMemory(16, heads=2, depth=2, chunk_size=4)
    x = torch.randn(1, 8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, state = mem(x)
    assert all(w.dtype == torch.float32 for w in state["weights"] + state["momentum"])


def test_split_is_by_file_name_stable_under_order_and_never_mixed(tmp_path):
    files = sorted(p for p in (STDLIB_JSON.parent / "urllib").rglob("*.py") if "__pycache__" not in p.parts)
    held = {p for p in files if is_heldout(p.name)}
    assert held and len(held) < len(files)
    a = ByteCorpus.from_paths(files)
    b = ByteCorpus.from_paths(list(reversed(files)))
    assert set(a.heldout_files) == set(b.heldout_files) == held
    assert set(split_files(files, "heldout")) == held
    assert set(split_files(files, "train")) == set(files) - held
    heldout_text = b"".join(p.read_bytes() for p in files if p in held)
    assert a.heldout_stream.array().tobytes() == heldout_text  # held-out bytes are exactly those files
    # every training window comes from the training files only
    train_text = b"".join(p.read_bytes() for p in files if p not in held)
    windows = a.sample(np.random.default_rng(0), 16, 200)
    assert all(bytes(w.astype(np.uint8)) in train_text for w in windows)


def test_stream_reads_across_file_boundaries_without_loading_files(tmp_path):
    parts = [bytes([i]) * n for i, n in enumerate((5, 1, 7, 3), start=65)]
    paths = []
    for i, data in enumerate(parts):
        paths.append(tmp_path / f"f{i}.txt")
        paths[-1].write_bytes(data)
    stream = ByteStream([(p, 0, p.stat().st_size) for p in paths])
    whole = b"".join(parts)
    assert len(stream) == len(whole)
    for start in range(len(whole)):
        for length in (1, 4, 9):
            assert stream.read(start, length).tobytes() == whole[start : start + length]


def test_single_file_holds_out_its_tail(tmp_path):
    f = tmp_path / "one.txt"
    f.write_bytes(bytes(range(256)) * 40)
    corpus = ByteCorpus.from_paths([f])
    assert corpus.train_bytes + corpus.heldout_bytes == 256 * 40
    assert corpus.heldout.tobytes() == f.read_bytes()[corpus.train_bytes :]


def test_fine_tune_from_a_base_with_a_new_memory_step(tmp_path):
    import dataclasses

    from neat_edge.model.checkpoint import build, save_checkpoint
    from neat_edge.training.train import fine_tune_start

    base = build(MICRO)
    save_checkpoint(base, tmp_path / "base")
    same = fine_tune_start(tmp_path / "base")  # no config: the base's own, every weight as saved
    assert same.cfg == MICRO and all(torch.equal(v, base.state_dict()[k]) for k, v in same.state_dict().items())
    cfg = dataclasses.replace(MICRO, memory_theta_max=4.0, memory_theta_init=0.4)
    model = fine_tune_start(tmp_path / "base", cfg)
    for k, v in model.state_dict().items():
        if k.endswith("gate_theta.bias"):  # θ starts at the new init on the new scale
            assert torch.allclose(torch.sigmoid(v) * 4.0, torch.full_like(v, 0.4))
        else:
            assert torch.equal(v, base.state_dict()[k]), k
    mem = model.latent.layers[0].memory
    assert mem.theta_max == pytest.approx(4.0 / mem.head_dim)
    with pytest.raises(NeatError, match="memory step"):
        fine_tune_start(tmp_path / "base", dataclasses.replace(MICRO, d_model=64))
    # the new fields are written only when set: earlier models keep their JSON and fingerprint
    assert "memory_theta_max" not in MICRO.to_dict() and NeatConfig.from_json(cfg.to_json()) == cfg


def test_fine_tune_cli_refuses_a_preset(tmp_path, monkeypatch, capsys):
    from neat_edge.tools.cli import main
    from tests.test_cli import inprocess_error

    err = inprocess_error(main, ["neat", "train", "--base", "neat_edge/checkpoints/tiny", "--preset", "small",
                                 "--data", str(STDLIB_JSON), "--out", str(tmp_path / "o")], monkeypatch, capsys)
    assert "--preset does not apply" in err and not (tmp_path / "o").exists()
