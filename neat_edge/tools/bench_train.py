"""`neat-bench train`: how many training bytes a second the project's real training step buys, against a
same-size plain transformer trained the same way in the same run.

    neat-bench train --preset tiny|small|base (or --config FILE) --device cuda --batch-size B --segments N
                     --tbptt K --steps S --json OUT [--peer] [--mode auto|eager|compile|graphs]

Both models run through training/step.py's TrainStep (what `neat train` runs: sampling, the forward over the
window, backward, clip, AdamW) on the same sampler over the same bytes. After --warmup-steps untimed steps
(compilation included, reported as compile_s), --steps steps are timed one by one (synchronised). One more
step runs under torch.profiler for kernels_per_step, and one eager forward + backward under FlopCounterMode
for model_flops_per_byte (matmul and attention FLOPs, the usual "model FLOPs").
"""

from __future__ import annotations

import gc
import resource
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from neat_edge.errors import NeatError
from neat_edge.fileio import atomic_write_json
from neat_edge.tools.common import check_torch_device, console


def _peak_gb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB -> GB (the process's high-water mark)


def _kernels(step, x, device: str) -> tuple[int, str]:
    """Device kernels launched by one step (CUDA), or ATen ops run (CPU)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step(x)
        if cuda:
            torch.cuda.synchronize(device)
    events = prof.events()
    if cuda:
        return sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA), "cuda kernels"
    return sum(1 for e in events if e.name.startswith("aten::") and e.cpu_parent is None), "aten ops"


def _flops_per_byte(window_loss, x, amp) -> float:
    import contextlib

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = x[: min(8, x.shape[0])]
    ctx = torch.autocast(x.device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    with FlopCounterMode(display=False) as counter, ctx:
        window_loss(x).backward()
    window_loss.zero_grad(set_to_none=True)
    return counter.get_total_flops() / x.numel()


def measure(name: str, model, window_loss, train_step, corpus, opts, window: int, steps: int, warmup: int) -> dict:
    """Time `steps` training steps of one model on windows of `window` bytes after `warmup` (the sampler
    seeded by opts.seed: both models see the same windows)."""
    import torch

    from neat_edge.model.neat import count_parameters
    from neat_edge.training.step import sample_batch

    device = opts.device
    rng = np.random.default_rng(opts.seed)

    def one(x=None):
        x = sample_batch(corpus, rng, opts.batch_size, window, device) if x is None else x
        return train_step(x)

    cuda = device.startswith("cuda")
    first = time.perf_counter()
    for _ in range(warmup):
        one()
    warm_s = time.perf_counter() - first
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times, sample_times = [], []
    for _ in range(steps):
        tick = time.perf_counter()
        x = sample_batch(corpus, rng, opts.batch_size, window, device)
        sampled = time.perf_counter()
        one(x)
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - tick)
        sample_times.append(sampled - tick)
    peak = _peak_gb(device)
    kernels, counted = _kernels(one, None, device)
    flops = _flops_per_byte(window_loss, sample_batch(corpus, rng, opts.batch_size, window, device), opts.autocast_dtype())
    batch_mb = opts.batch_size * window / 1e6
    step_s = float(np.median(times))
    bytes_per_s = opts.batch_size * window / step_s
    return {
        "model": name, "parameters": count_parameters(model), "batch_size": opts.batch_size, "window_bytes": window,
        "step_mode": train_step.mode, "memory_budget": train_step.memory_budget, "bytes_per_s": round(bytes_per_s, 1),
        "step_ms": {"p50": round(1e3 * step_s, 3), "p90": round(1e3 * float(np.percentile(times, 90)), 3)},
        "sample_ms_p50": round(1e3 * float(np.median(sample_times)), 3),
        "peak_memory_gb": round(peak, 3), "peak_memory_gb_per_mb_batch": round(peak / batch_mb, 3),
        "kernels_per_step": kernels, "kernels_counted": counted,
        "compile_s": round(max(0.0, warm_s - warmup * step_s), 1),
        "model_flops_per_byte": round(flops, 1), "achieved_tflops": round(flops * bytes_per_s / 1e12, 3),
    }


def _release(device: str) -> None:
    import torch

    torch._dynamo.reset()
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _default_data() -> list[Path]:
    """The interpreter's own standard library: bytes every machine with Python has, the same for both models."""
    return [Path(sysconfig.get_paths()["stdlib"])]


def bench_neat(cfg, corpus, opts, steps: int, warmup: int) -> tuple[dict, int]:
    import torch

    from neat_edge.model.checkpoint import build
    from neat_edge.model.neat import count_parameters
    from neat_edge.training.train import build_train_step

    torch.manual_seed(opts.seed)
    model = build(cfg).to(opts.device).train()
    _, window_loss, _, step = build_train_step(model, opts)
    result = measure(cfg.name, model, window_loss, step, corpus, opts, opts.segments * cfg.segment_len, steps, warmup)
    n = count_parameters(model)
    del model, window_loss, step
    _release(opts.device)
    return result, n


def bench_peer(parameters: int, corpus, opts, steps: int, warmup: int, window: int) -> dict:
    try:
        from neat_edge.hf.peer import PeerWindowLoss, build_peer
    except ImportError as exc:
        raise NeatError(f"--peer needs Hugging Face transformers (pip install -e '.[hf]'): {exc}") from None
    from neat_edge.training.step import TrainStep, make_adamw, resolve_mode
    from neat_edge.training.train import _param_groups

    peer = build_peer(parameters, window, opts.seed).to(opts.device).train()
    loss = PeerWindowLoss(peer)
    optim = make_adamw(_param_groups(peer, opts.weight_decay), opts.lr)
    step = TrainStep(loss, peer.parameters(), optim, opts.clip, opts.autocast_dtype(), opts.device,
                     resolve_mode(opts.step_mode, opts.device))
    result = measure("llama " + "x".join(str(peer.peer_shape[k]) for k in ("layers", "hidden")), peer, loss, step,
                     corpus, opts, window, steps, warmup)
    result["shape"] = peer.peer_shape
    del peer, loss, step, optim
    _release(opts.device)
    return result


def _row(table: Table, r: dict) -> None:
    if "error" in r:
        table.add_row(r["model"], *["-"] * 8, f"[red]{r['error'][:50]}[/red]")
        return
    table.add_row(r["model"], f"{r['parameters']:,}", str(r["batch_size"]), r["step_mode"], f"{r['bytes_per_s']:,.0f}",
                  f"{r['step_ms']['p50']:.1f} / {r['step_ms']['p90']:.1f}", f"{r['peak_memory_gb']:.2f}",
                  str(r["kernels_per_step"]), f"{r['compile_s']:.0f}", f"{r['achieved_tflops']:.2f}")


def train_bench_command(
    preset_name: str | None = typer.Option(None, "--preset", help="tiny (default), small or base."),
    config: Path | None = typer.Option(None, "--config", help="A config.json instead of a preset."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    batch_size: int = typer.Option(16, "--batch-size", min=1, max=1 << 16),
    peer_batch_size: int | None = typer.Option(None, "--peer-batch-size", min=1, max=1 << 16,
                                               help="The peer's batch (default: --batch-size)."),
    segments: int = typer.Option(8, "--segments", min=1, max=4096, help="Segments per window (memory carried)."),
    tbptt: int = typer.Option(8, "--tbptt", min=1, max=4096),
    steps: int = typer.Option(20, "--steps", min=1, max=100_000, help="Timed steps."),
    warmup: int = typer.Option(3, "--warmup-steps", min=1, max=10_000, help="Untimed steps first (compilation)."),
    mode: str = typer.Option("auto", "--mode", help="auto (compile on CUDA, eager on the CPU), eager, compile, graphs."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 on CUDA), fp32 or bf16."),
    grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing"),
    memory_budget: float = typer.Option(1.0, "--memory-budget", min=0.01, max=1.0,
                                        help="Compiled steps: share of saved activations kept (neat train's)."),
    peer: bool = typer.Option(False, "--peer", help="Also train the same-size Hugging Face Llama, same way, same bytes."),
    data: list[Path] | None = typer.Option(None, "--data", help="Training bytes (default: this Python's stdlib)."),
    seed: int = typer.Option(0, "--seed"),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results as JSON here."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
):
    """Training throughput of the real training step, and its ratio to a same-size plain transformer."""
    from neat_edge.config import NeatConfig, preset
    from neat_edge.training.data import ByteCorpus
    from neat_edge.training.step import resolve_mode
    from neat_edge.training.train import PRECISIONS, TrainOptions

    check_torch_device(device)
    if preset_name and config:
        raise NeatError("give --preset or --config, not both")
    if precision not in PRECISIONS:
        raise NeatError(f"unknown --precision '{precision}' (choose from {', '.join(PRECISIONS)})")
    resolve_mode(mode, device)
    cfg = NeatConfig.load(config) if config else preset(preset_name or "tiny")
    if cfg.patching != "fixed":
        raise NeatError("neat-bench train times fixed patching (entropy patching needs its trained entropy model)")
    corpus = ByteCorpus.from_paths(data or _default_data())
    opts = TrainOptions(batch_size=batch_size, segments=segments, tbptt=tbptt, device=device, precision=precision,
                        grad_checkpointing=grad_checkpointing, step_mode=mode, seed=seed,
                        memory_budget=memory_budget)
    window = segments * cfg.segment_len
    report = {"command": " ".join(["neat-bench", "train", *sys.argv[1:]]), "device": _device_name(device),
              "data_bytes": corpus.train_bytes, "window_bytes": window}
    with console.status(f"timing {cfg.name} ({steps} steps after {warmup} warm-up)..."):
        try:
            report["neat"], n_params = bench_neat(cfg, corpus, opts, steps, warmup)
        except _oom_errors() as exc:
            report["neat"], n_params = _oom(cfg.name, batch_size, exc, device), None
    if peer:
        import dataclasses

        peer_opts = dataclasses.replace(opts, batch_size=peer_batch_size or batch_size)
        if n_params is None:
            from neat_edge.model.checkpoint import build
            from neat_edge.model.neat import count_parameters

            n_params = count_parameters(build(cfg))
        with console.status("timing the same-size Llama peer..."):
            try:
                report["peer"] = bench_peer(n_params, corpus, peer_opts, steps, warmup, window)
            except _oom_errors() as exc:
                report["peer"] = _oom("peer", peer_opts.batch_size, exc, device)
        ok = "error" not in report["neat"] and "error" not in report["peer"]
        report["neat_over_peer"] = round(report["neat"]["bytes_per_s"] / report["peer"]["bytes_per_s"], 4) if ok else None
    table = Table(title=f"neat-bench train — {report['device']}, window {window} bytes")
    for col in ("model", "params", "batch", "mode", "bytes/s", "step p50 / p90 ms", "peak GB", "kernels/step",
                "compile s", "TFLOP/s"):
        table.add_column(col, justify="right")
    for key in ("neat", "peer"):
        if key in report:
            _row(table, report[key])
    console.print(table)
    if report.get("neat_over_peer") is not None:
        console.print(f"neat_over_peer = {report['neat_over_peer']:.3f}")
    if json_out:
        atomic_write_json(json_out, report)


def _device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"


def _oom_errors():
    import torch

    return (torch.cuda.OutOfMemoryError,)


def _oom(name: str, batch: int, exc: Exception, device: str) -> dict:
    _release(device)
    return {"model": name, "batch_size": batch, "error": f"out of memory at batch {batch}: {str(exc).splitlines()[0]}"}
