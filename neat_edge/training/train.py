"""Training: AdamW, warmup + cosine, clipping, segments chained with the memory carried (truncated
backprop every `tbptt` segments), bf16 autocast on GPU (the Titans memory update stays fp32),
optional gradient checkpointing per segment, periodic held-out bits-per-byte, and resumable saves
(weights + optimizer + RNG, all safetensors/JSON) so a run can stop anywhere and go on bit-for-bit.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.checkpoint import checkpoint

from neat_edge.config import NeatConfig
from neat_edge.errors import NeatError
from neat_edge.fileio import atomic_write_json, commit_together
from neat_edge.model.checkpoint import build, load_checkpoint, save_checkpoint
from neat_edge.model.entropy import (
    EntropyConfig,
    build_entropy_model,
    calibrate_patcher,
    load_entropy_model,
    save_entropy_model,
    save_patching,
)
from neat_edge.model.neat import NeatModel, count_parameters
from neat_edge.training.data import ByteCorpus
from neat_edge.training.distributed import Ranks, ShardedSaver, WindowLoss
from neat_edge.training.patches import WindowPatches
from neat_edge.training.recall_episodes import RecallEpisodes, RecallMix
from neat_edge.training.resume import has_trainer_state, load_trainer_state, save_trainer_state
from neat_edge.training.step import TrainStep, make_adamw, resolve_mode, sample_batch

LN2 = math.log(2.0)
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainOptions:
    steps: int = 1000
    batch_size: int = 16
    segments: int = 4  # segments per training window, chained with state carried
    tbptt: int = 4  # backprop through at most this many segments
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.1
    clip: float = 1.0
    seed: int = 0
    eval_bytes: int = 65536
    eval_every: int = 0  # held-out bits-per-byte every N steps (0: only at the end)
    save_every: int = 0  # weights + trainer state every N steps (0: only at the end)
    precision: str = "auto"  # auto = bf16 on CUDA, fp32 on CPU
    grad_checkpointing: bool = False  # recompute each segment's activations in backward
    max_minutes: float = 0.0  # stop (resumable) after this much training time; 0 = no limit
    memory_budget: float = 1.0  # compiled steps: share of saved activations kept (training/step.py)
    step_mode: str = "auto"  # training/step.py: auto (compile on CUDA, eager on the CPU), eager, compile, graphs
    recall_fraction: float = 0.0  # share of windows carrying recall episodes (training/recall_episodes.py)
    recall_distances: tuple[int, int] = (200, 4000)  # bytes from a first occurrence's end to its repeat
    device: str = "cpu"
    entropy_checkpoint: str | None = None  # entropy patching: the trained entropy model

    def autocast_dtype(self) -> torch.dtype | None:
        if self.precision not in PRECISIONS:
            raise NeatError(f"unknown precision '{self.precision}' (choose from {', '.join(PRECISIONS)})")
        use_bf16 = self.precision == "bf16" or (self.precision == "auto" and self.device.startswith("cuda"))
        return torch.bfloat16 if use_bf16 else None


def _autocast(device: str, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def chained_segments(model, windows: torch.Tensor, state, tbptt: int | None = None,
                     patches: WindowPatches | list | None = None, grad_checkpointing: bool = False):
    """Yield (segment, outputs, state) for windows [B, n*S] run segment by segment with the state carried:
    detached every `tbptt` segments (truncated backprop), each segment recomputed in backward with
    gradient checkpointing. Works for NeatModel (fixed or entropy patches) and EntropyModel alike.
    `patches` is a WindowPatches, or the plan it made for these windows (a list of (patch_ids, patch_mask))."""
    seg = model.cfg.segment_len
    is_neat = isinstance(model, NeatModel)
    if is_neat:
        plan = patches if isinstance(patches, list) else (patches or WindowPatches(model.cfg))(windows)
        z = model.default_svf_z()
    recompute = grad_checkpointing and torch.is_grad_enabled()
    for i in range(windows.shape[1] // seg):
        if tbptt and i and i % tbptt == 0:
            state = {k: v.detach() for k, v in state.items()}
        x = windows[:, i * seg : (i + 1) * seg]
        args = (x, *plan[i], z, state) if is_neat else (x, state)
        out, state = checkpoint(model.step, *args, use_reentrant=False) if recompute else model.step(*args)
        yield x, out, state


def chained_nll(model, windows: torch.Tensor, state, tbptt: int | None = None, patches: WindowPatches | list | None = None,
                grad_checkpointing: bool = False):
    """Sum of -log p over windows [B, n*S] scored segment by segment with the state carried."""
    total, last = windows.new_zeros((), dtype=torch.float32), state
    for x, out, last in chained_segments(model, windows, state, tbptt, patches, grad_checkpointing):  # noqa: B007
        total = total - out["byte_logprobs"].float().gather(-1, x.unsqueeze(-1)).sum()
    return total, last


def _fresh_state(model, batch: int):
    if isinstance(model, NeatModel):
        return model.initial_state_trainable(batch)
    return model.initial_state(batch)


@torch.no_grad()
def evaluate_bpb(model, data: np.ndarray, streams: int = 8, max_bytes: int | None = None,
                 device: str = "cpu", patches: WindowPatches | None = None, autocast: torch.dtype | None = None) -> float:
    """Bits per byte of `data`, split into `streams` contiguous streams scored in parallel with the
    state carried across segments from a fresh start."""
    seg = model.cfg.segment_len
    data = data[:max_bytes] if max_bytes else data
    per_stream = (len(data) // streams) // seg * seg
    if per_stream == 0:
        streams, per_stream = 1, len(data) // seg * seg
    if per_stream == 0:
        raise ValueError("evaluation data is shorter than one segment")
    windows = torch.from_numpy(data[: streams * per_stream].astype(np.int64)).view(streams, per_stream)
    with _autocast(device, autocast):
        nll, _ = chained_nll(model, windows.to(device), _fresh_state(model, streams), patches=patches)
    return float(nll) / windows.numel() / LN2


def _param_groups(model, weight_decay):
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "init_weights" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "init_weights" in n]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _progress_columns(label: str):
    return [TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]:.3f}  bpb {task.fields[bpb]:.3f}  held-out {task.fields[eval]:.3f}"),
            TimeElapsedColumn(), TimeRemainingColumn()]


def fit(model, corpus: ByteCorpus, opts: TrainOptions, out_dir: str | Path, save_weights, resume: bool = False,
        show_progress: bool = True, label: str = "train", patches: WindowPatches | None = None,
        loss_fn=None, ranks: Ranks | None = None) -> dict:
    """The training loop shared by every byte model. `save_weights(model, out_dir)` writes the
    weights; the trainer state goes next to them at every save, so `resume=True` continues a run
    (same batches, same schedule, same result as never stopping). Returns the run's measurements.
    loss_fn (default chained_nll, same signature) is the summed loss of a batch of windows: MVoT's
    L_CE + λ·L_D over mixed text/image windows is one (training/mvot.py). `ranks` (training/distributed.py)
    makes this process one rank of a torchrun job: its own windows, gradients averaged over the ranks (DDP or
    FSDP2), rank 0 writing; None is one plain process."""
    loss_fn, ranks = loss_fn or chained_nll, ranks or Ranks()
    torch.manual_seed(opts.seed)
    rng = ranks.sampler_rng(opts.seed)
    model.to(opts.device).train()
    amp = opts.autocast_dtype()

    saver, batch_loss, optim, train_step = build_train_step(model, opts, patches, loss_fn, ranks)

    def lr_factor(step):  # linear warmup, then cosine down to min_lr_ratio
        if step < opts.warmup:
            return (step + 1) / opts.warmup
        progress = (step - opts.warmup) / max(1, opts.steps - opts.warmup)
        if opts.max_minutes:  # a time budget: the cosine ends when the budget does, if before --steps. The first
            # step's time (compilation) is spent before the schedule can use it, so it is left out of both.
            first = run.get("first_step_seconds", 0.0)
            progress = max(progress, (run["train_seconds"] - first) / max(1e-9, opts.max_minutes * 60 - first))
        return opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    mix = corpus.mix.to_dict() if hasattr(corpus, "mix") else None  # recall episodes in the batches
    run = {"step": 0, "loss_history": [], "eval_curve": [], "skipped_nonfinite_steps": 0, "train_seconds": 0.0,
           "recall_mix": mix}
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_factor)
    if resume:
        saved = load_trainer_state(out_dir, saver.plain if saver else model, saver.optimizer if saver else optim,
                                   sched, rng)
        if saver:
            saver.load_into(batch_loss, optim)
        if ranks.rank:  # rank r's own stream (the state loaded into rng above is rank 0's)
            rng = ranks.sampler_rng(opts.seed, saved["step"], saved.get("rank_rngs"))
        if saved.get("recall_mix") != mix:  # else the batches after resuming would not be the run's
            raise NeatError(f"--resume: the run was started with recall episodes {saved.get('recall_mix')}, "
                            f"not {mix}: give the same --recall-fraction / --recall-distances")
        run.update(saved)
    window = model.cfg.segment_len * opts.segments
    started_at, session_seconds, session_steps, step_times = run["step"], 0.0, 0, []

    def save():  # rank 0 writes (under FSDP2 every rank first gathers the full weights and moments); weights and
        # trainer state land together: a run killed mid-save resumes from the last one
        if ranks.active:
            run["rank_rngs"] = ranks.rank_rngs(rng)
        if saver:
            saver.gather(batch_loss, optim, ranks.is_main)
        if not ranks.is_main:
            return
        if ranks.active:
            weights, moments = (saver.plain, saver.optimizer) if saver else (copy.deepcopy(model).cpu(), optim)
            with commit_together(out_dir):  # weights and trainer state land together
                save_weights(weights, out_dir)
                save_trainer_state(out_dir, saver.plain if saver else model, moments, sched, rng, run)
            return
        model.cpu()
        with commit_together(out_dir):
            save_weights(model, out_dir)
            save_trainer_state(out_dir, model, optim, sched, rng, run)
        model.to(opts.device)

    def bpb_now(autocast):  # every rank evaluates (the same bytes): FSDP2 gathers the weights for it
        with ranks.gathered(batch_loss):
            return evaluate_bpb(model, corpus.heldout_stream.array(opts.eval_bytes), device=opts.device,
                                patches=patches, autocast=autocast)

    def held_out_bpb():
        model.eval()
        bpb = bpb_now(amp)
        model.train()
        run["eval_curve"].append([run["step"], round(bpb, 5)])
        return bpb

    last_eval = run["eval_curve"][-1][1] if run["eval_curve"] else float("nan")
    show_progress = show_progress and ranks.is_main
    with Progress(*_progress_columns(label), disable=not show_progress, transient=False) as progress:
        task = progress.add_task(label, total=opts.steps, completed=run["step"], loss=float("nan"),
                                 bpb=float("nan"), eval=last_eval)
        while run["step"] < opts.steps:
            tick = time.perf_counter()
            x = sample_batch(corpus, rng, opts.batch_size, window, opts.device)
            # (ranks: gradients averaged over every rank's windows; the loss too, so every rank skips or steps alike)
            mean_loss, stepped = train_step(x, ranks.mean)
            if stepped:
                run["loss_history"].append(round(mean_loss, 5))
            else:
                run["skipped_nonfinite_steps"] += 1  # a non-finite batch must never reach the weights
            sched.step()
            if opts.device.startswith("cuda"):
                torch.cuda.synchronize()
            spent = time.perf_counter() - tick
            session_seconds, session_steps = session_seconds + spent, session_steps + 1
            step_times.append(spent)
            run["step"] += 1
            run["train_seconds"] = round(run["train_seconds"] + spent, 3)
            run.setdefault("first_step_seconds", run["train_seconds"])
            recent = float(np.mean(run["loss_history"][-20:])) if run["loss_history"] else float("nan")
            if opts.eval_every and run["step"] % opts.eval_every == 0 and run["step"] < opts.steps:
                last_eval = held_out_bpb()
            if opts.save_every and run["step"] % opts.save_every == 0 and run["step"] < opts.steps:
                save()
            progress.update(task, advance=1, loss=recent, bpb=recent / LN2, eval=last_eval)
            if opts.max_minutes and ranks.any(session_seconds > opts.max_minutes * 60):  # same step count everywhere
                break
    stopped_early = run["step"] < opts.steps
    model.eval()
    final_bpb = bpb_now(None)
    save()
    model.cpu()
    history = run["loss_history"]
    result = {
        "command": " ".join(["neat", *sys.argv[1:]]),
        "config": model.cfg.to_dict(),
        "parameters": count_parameters(model),
        "options": vars(opts),
        "device_name": torch.cuda.get_device_name() if opts.device.startswith("cuda") else "cpu",
        "precision": "bf16" if amp is not None else "fp32",
        "step_mode": train_step.mode,
        "compile_seconds": round(train_step.compile_seconds, 1),
        "data": {"files": corpus.files, "train_bytes": corpus.train_bytes, "heldout_bytes": corpus.heldout_bytes},
        "recall_episodes": mix,
        "steps_done": run["step"],
        "resumed_from_step": started_at if resume else None,
        "stopped_early": stopped_early,
        "final_train_loss_nats": float(np.mean(history[-50:])) if history else float("nan"),
        "skipped_nonfinite_steps": run["skipped_nonfinite_steps"],
        "heldout_bits_per_byte": final_bpb,
        "eval_curve": run["eval_curve"],
        "train_seconds": round(run["train_seconds"], 1),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if opts.device.startswith("cuda") else None,
        "bytes_per_second": round(ranks.world * session_steps * opts.batch_size * window / max(session_seconds, 1e-9), 1),
        "loss_curve": history[:: max(1, len(history) // 100)],
    }
    if len(step_times) > 6:  # past the first steps' allocations and autotuning
        result["bytes_per_second_steady"] = round(
            ranks.world * (len(step_times) - 3) * opts.batch_size * window / sum(step_times[3:]), 1)
    if ranks.active:  # --batch-size is per rank; bytes_per_second counts every rank's windows
        result["ranks"] = {"world_size": ranks.world, "strategy": ranks.strategy}
    return result


def build_train_step(model, opts: TrainOptions, patches: WindowPatches | None = None, loss_fn=None,
                     ranks: Ranks | None = None):
    """What fit() trains with, built the same way for `neat-bench train`: (FSDP2 saver or None, the window
    loss module (DDP / FSDP2-wrapped under ranks), AdamW, TrainStep). The model is already on opts.device."""
    ranks = ranks or Ranks()

    def make_optimizer(m):
        return make_adamw(_param_groups(m, opts.weight_decay), opts.lr)

    saver = ShardedSaver(copy.deepcopy(model).cpu(), make_optimizer) if ranks.sharded else None
    batch_loss = ranks.wrap(WindowLoss(model, loss_fn or chained_nll, _fresh_state, opts.tbptt, patches,
                                       opts.grad_checkpointing))
    optim = make_optimizer(model)
    # auto compiles what was measured compiled (docs/training.md): the NEAT byte loss in one process or under
    # DDP. FSDP2, MVoT's loss and the entropy model keep the eager step unless a mode is asked for.
    measured = isinstance(model, NeatModel) and loss_fn in (None, chained_nll) and not ranks.sharded
    mode = resolve_mode("eager" if opts.step_mode == "auto" and not measured else opts.step_mode, opts.device)
    plan_fn = (patches or WindowPatches(model.cfg)) if isinstance(model, NeatModel) else None
    step = TrainStep(batch_loss, model.parameters(), optim, opts.clip, opts.autocast_dtype(), opts.device, mode,
                     plan_fn, memory_budget=opts.memory_budget)
    return saver, batch_loss, optim, step


def _check_resume(out_dir, resume: bool) -> bool:
    if resume and not has_trainer_state(out_dir):
        raise NeatError(f"--resume: {out_dir} holds no trainer state to resume from")
    return resume


def fine_tune_start(base: str | Path, cfg: NeatConfig | None = None) -> NeatModel:
    """The dense model `base` holds, for further training under cfg (None: the base's own config).
    cfg may differ from the base's only in the memory step (memory_theta_max / _init, memory_step: none
    changes a weight's shape); a new θ scale restarts the θ gate at memory_theta_init (its old logits
    meant a step on another scale)."""
    start = load_checkpoint(base, svf=False)
    cfg = cfg or start.cfg
    theta = ("memory_theta_max", "memory_theta_init")
    step = (*theta, "memory_step")
    same_arch = dataclasses.replace(cfg, **{k: getattr(start.cfg, k) for k in (*step, "name")}) == start.cfg
    if not same_arch:
        raise NeatError(f"--base {base}: the config given differs from the base's in more than the memory step "
                        f"({', '.join(step)})")
    model = build(cfg)
    fresh_theta_gates = [layer.memory.gate_theta.bias.detach().clone() for layer in model.latent.layers]
    model.load_state_dict(start.state_dict())
    if any(getattr(cfg, k) != getattr(start.cfg, k) for k in theta):
        with torch.no_grad():  # the new build's own gate init: memory_theta_init on the new scale
            for layer, bias in zip(model.latent.layers, fresh_theta_gates):
                layer.memory.gate_theta.bias.copy_(bias)
    return model


def train(cfg: NeatConfig | None, data_paths, out_dir, opts: TrainOptions, show_progress: bool = True,
          resume: bool = False, base: str | Path | None = None, ranks: Ranks | None = None) -> dict:
    """Train a NeatModel from its seeded init, or from the checkpoint `base` (fine_tune_start), or
    resume the run in out_dir, and write a checkpoint directory with train_log.json and the trainer state.
    `ranks`: this process is one rank of a torchrun job (training/distributed.py); rank 0 writes."""
    ranks = ranks or Ranks()
    corpus = ByteCorpus.from_paths(data_paths)
    if _check_resume(out_dir, resume):
        model = load_checkpoint(out_dir, svf=False)  # the run's own config wins over the one given
        cfg = model.cfg
        model.train()
    elif base is not None:
        model = fine_tune_start(base, cfg)
        cfg = model.cfg
    else:
        model = build(cfg)
    if opts.recall_fraction:
        span = min(opts.tbptt, opts.segments) * cfg.segment_len
        corpus = RecallEpisodes(corpus, RecallMix(opts.recall_fraction, *opts.recall_distances, span=span))
    patches, patching = None, None
    if cfg.patching == "entropy":
        if not opts.entropy_checkpoint:
            raise NeatError("entropy patching needs a trained entropy model: --entropy-checkpoint DIR "
                            "(make one with `neat train --entropy-model`)")
        entropy_model = load_entropy_model(opts.entropy_checkpoint)
        if entropy_model.cfg.segment_len != cfg.segment_len:
            raise NeatError("the entropy model's segment_len must equal the model's segment_len")
        patcher = calibrate_patcher(entropy_model, corpus.train_stream.array(1 << 18).tobytes(),
                                    cfg.target_patch_len / 10, cfg.max_patch_len, cfg.segment_len)
        patches, patching = WindowPatches(cfg, entropy_model.to(opts.device), patcher), (entropy_model, patcher)
    result = fit(model, corpus, opts, out_dir, save_checkpoint, resume, show_progress, patches=patches, ranks=ranks)
    out = Path(out_dir)
    if not ranks.is_main:
        return result
    if patching:
        save_patching(out, patching[0].cpu(), patching[1])
        result["patcher"] = {"threshold": patching[1].threshold, "max_patch_len": patching[1].max_patch_len}
    result["mean_patch_length"] = _mean_patch_length(patches or WindowPatches(cfg), corpus.heldout_stream, cfg)
    if base is not None and not resume:
        result["base"] = str(base)
    atomic_write_json(out / "train_log.json", result)
    return result


def _mean_patch_length(patches: WindowPatches, data, cfg: NeatConfig, max_bytes: int = 1 << 16) -> float:
    seg = cfg.segment_len
    n = min(len(data), max_bytes) // seg * seg
    if n == 0:
        return float("nan")
    arr = data.array(n) if hasattr(data, "array") else data[:n]
    plan = patches(torch.from_numpy(arr.astype(np.int64)).view(1, n))
    return n / sum(float(mask.sum()) for _, mask in plan)


def train_entropy(cfg: EntropyConfig, data_paths, out_dir, opts: TrainOptions, show_progress: bool = True,
                  resume: bool = False) -> dict:
    """Train the BLT entropy model and write entropy_config.json + entropy_model.safetensors."""
    corpus = ByteCorpus.from_paths(data_paths)
    model = load_entropy_model(out_dir).train() if _check_resume(out_dir, resume) else build_entropy_model(cfg)
    result = fit(model, corpus, opts, out_dir, save_entropy_model, resume, show_progress, label="entropy")
    atomic_write_json(Path(out_dir) / "entropy_train_log.json", result)
    return result
