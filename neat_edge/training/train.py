"""Training v0: AdamW, warmup + cosine schedule, gradient clipping, segments chained with the memory
carried (truncated backprop every `tbptt` segments), held-out bits-per-byte at the end."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from neat_edge.config import NeatConfig
from neat_edge.errors import NeatError
from neat_edge.fileio import atomic_write_json
from neat_edge.model.checkpoint import build, save_checkpoint
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
from neat_edge.training.patches import WindowPatches

LN2 = math.log(2.0)


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
    device: str = "cpu"
    entropy_checkpoint: str | None = None  # entropy patching: the trained entropy model


def chained_nll(model, windows: torch.Tensor, state, tbptt: int | None = None, patches: WindowPatches | None = None):
    """Sum of -log p over windows [B, n*S] scored segment by segment with the state carried.
    Works for NeatModel (fixed or entropy patches) and EntropyModel alike."""
    seg = model.cfg.segment_len
    is_neat = isinstance(model, NeatModel)
    if is_neat:
        plan = (patches or WindowPatches(model.cfg))(windows)
        z = model.default_svf_z()
    total = windows.new_zeros((), dtype=torch.float32)
    for i in range(windows.shape[1] // seg):
        if tbptt and i and i % tbptt == 0:
            state = {k: v.detach() for k, v in state.items()}
        x = windows[:, i * seg : (i + 1) * seg]
        out, state = model.step(x, *plan[i], z, state) if is_neat else model.step(x, state)
        total = total - out["byte_logprobs"].gather(-1, x.unsqueeze(-1)).sum()
    return total, state


def _fresh_state(model, batch: int):
    if isinstance(model, NeatModel):
        return model.initial_state_trainable(batch)
    return model.initial_state(batch)


@torch.no_grad()
def evaluate_bpb(model, data: np.ndarray, streams: int = 8, max_bytes: int | None = None,
                 device: str = "cpu", patches: WindowPatches | None = None) -> float:
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
    nll, _ = chained_nll(model, windows.to(device), _fresh_state(model, streams), patches=patches)
    return float(nll) / windows.numel() / LN2


def _param_groups(model, weight_decay):
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "init_weights" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "init_weights" in n]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fit(model, corpus: ByteCorpus, opts: TrainOptions, show_progress: bool = True, label: str = "train",
        patches: WindowPatches | None = None) -> dict:
    """The training loop shared by every byte model: AdamW, warmup + cosine, clipping, chained
    segments with truncated backprop, non-finite batches skipped. Returns the run's measurements."""
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    model.to(opts.device).train()
    optim = torch.optim.AdamW(_param_groups(model, opts.weight_decay), lr=opts.lr, betas=(0.9, 0.95))

    def lr_factor(step):  # linear warmup, then cosine down to min_lr_ratio
        if step < opts.warmup:
            return (step + 1) / opts.warmup
        progress = (step - opts.warmup) / max(1, opts.steps - opts.warmup)
        return opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_factor)
    window = model.cfg.segment_len * opts.segments
    history, start, skipped = [], time.time(), 0
    columns = [TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.3f}  bpb {task.fields[bpb]:.3f}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        task = progress.add_task(label, total=opts.steps, loss=float("nan"), bpb=float("nan"))
        for _ in range(opts.steps):
            x = torch.from_numpy(corpus.sample(rng, opts.batch_size, window)).to(opts.device)
            nll, _ = chained_nll(model, x, _fresh_state(model, opts.batch_size), opts.tbptt, patches)
            loss = nll / x.numel()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip)
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                skipped += 1  # a non-finite batch must never reach the weights
                sched.step()
                progress.update(task, advance=1)
                continue
            optim.step()
            sched.step()
            history.append(loss.item())
            recent = float(np.mean(history[-20:]))
            progress.update(task, advance=1, loss=recent, bpb=recent / LN2)
    train_seconds = time.time() - start
    model.eval()
    heldout_bpb = evaluate_bpb(model, corpus.heldout, max_bytes=opts.eval_bytes, device=opts.device, patches=patches)
    model.cpu()
    return {
        "command": " ".join(["neat", *sys.argv[1:]]),
        "config": model.cfg.to_dict(),
        "parameters": count_parameters(model),
        "options": vars(opts),
        "data": {"files": corpus.files, "train_bytes": int(len(corpus.train)),
                 "heldout_bytes": int(len(corpus.heldout))},
        "final_train_loss_nats": float(np.mean(history[-50:])) if history else float("nan"),
        "skipped_nonfinite_steps": skipped,
        "heldout_bits_per_byte": heldout_bpb,
        "train_seconds": round(train_seconds, 1),
        "bytes_per_second": round(opts.steps * opts.batch_size * window / max(train_seconds, 1e-9), 1),
        "loss_curve": [round(v, 4) for v in history[:: max(1, len(history) // 100)]],
    }


def train(cfg: NeatConfig, data_paths, out_dir, opts: TrainOptions, show_progress: bool = True) -> dict:
    """Train a NeatModel from its seeded init and write a checkpoint directory (+ train_log.json)."""
    corpus = ByteCorpus.from_paths(data_paths)
    model = build(cfg)
    patches, patching = None, None
    if cfg.patching == "entropy":
        if not opts.entropy_checkpoint:
            raise NeatError("entropy patching needs a trained entropy model: --entropy-checkpoint DIR "
                            "(make one with `neat train --entropy-model`)")
        entropy_model = load_entropy_model(opts.entropy_checkpoint)
        if entropy_model.cfg.segment_len != cfg.segment_len:
            raise NeatError("the entropy model's segment_len must equal the model's segment_len")
        patcher = calibrate_patcher(entropy_model, corpus.train[: 1 << 18].tobytes(), cfg.target_patch_len / 10,
                                    cfg.max_patch_len, cfg.segment_len)
        patches, patching = WindowPatches(cfg, entropy_model.to(opts.device), patcher), (entropy_model, patcher)
    result = fit(model, corpus, opts, show_progress, patches=patches)
    out = save_checkpoint(model, out_dir)
    if patching:
        save_patching(out, patching[0].cpu(), patching[1])
        result["patcher"] = {"threshold": patching[1].threshold, "max_patch_len": patching[1].max_patch_len}
    result["mean_patch_length"] = _mean_patch_length(patches or WindowPatches(cfg), corpus.heldout, cfg)
    atomic_write_json(out / "train_log.json", result)
    return result


def _mean_patch_length(patches: WindowPatches, data: np.ndarray, cfg: NeatConfig, max_bytes: int = 1 << 16) -> float:
    seg = cfg.segment_len
    n = min(len(data), max_bytes) // seg * seg
    if n == 0:
        return float("nan")
    plan = patches(torch.from_numpy(data[:n].astype(np.int64)).view(1, n))
    return n / sum(float(mask.sum()) for _, mask in plan)


def train_entropy(cfg: EntropyConfig, data_paths, out_dir, opts: TrainOptions, show_progress: bool = True) -> dict:
    """Train the BLT entropy model and write entropy_config.json + entropy_model.safetensors."""
    corpus = ByteCorpus.from_paths(data_paths)
    model = build_entropy_model(cfg)
    result = fit(model, corpus, opts, show_progress, label="entropy")
    out = save_entropy_model(model, out_dir)
    atomic_write_json(Path(out) / "entropy_train_log.json", result)
    return result
