"""`neat-bench memory`: our closed-form Titans memory layer against titans-pytorch's NeuralMemory,
same sizes, same process, same inputs (titans-pytorch is optional: `pip install titans-pytorch`)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import typer
from rich.table import Table

from neat_edge.fileio import atomic_write_json
from neat_edge.model.titans import NeuralMemory
from neat_edge.tools.common import console


def _time(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _measure(module, x, runs, warmup, train: bool) -> dict:
    if train:
        xg = x.clone().requires_grad_(True)

        def fn():
            y, _ = module(xg)
            y.square().mean().backward()
    else:
        def fn():
            with torch.no_grad():
                module(x)
    times = sorted(_time(fn, runs, warmup))
    median = times[len(times) // 2]
    return {"median_ms": median * 1e3, "tokens_per_s": x.shape[0] * x.shape[1] / median}


def bench_memory(dim=256, heads=4, chunk=64, tokens=1024, depth=2, expansion=4, batch=1, runs=5, warmup=2) -> dict:
    torch.manual_seed(0)
    x = torch.randn(batch, tokens, dim)
    impls = {"neat_edge": NeuralMemory(dim, heads=heads, depth=depth, chunk_size=chunk, expansion=expansion)}
    peer_error = None
    try:
        from titans_pytorch import NeuralMemory as PeerMemory

        impls["titans_pytorch"] = PeerMemory(dim=dim, chunk_size=chunk, heads=heads, dim_head=dim // heads,
                                             default_model_kwargs={"depth": depth, "expansion_factor": float(expansion)})
    except ImportError:
        peer_error = "titans-pytorch is not installed (pip install titans-pytorch==0.5.5)"
    results = {"config": {"dim": dim, "heads": heads, "chunk": chunk, "tokens": tokens, "depth": depth,
                          "expansion": expansion, "batch": batch, "threads": torch.get_num_threads()},
               "implementations": {}}
    for name, module in impls.items():
        results["implementations"][name] = {mode: _measure(module, x, runs, warmup, mode == "train")
                                            for mode in ("inference", "train")}
    if peer_error:
        results["titans_pytorch_error"] = peer_error
    else:
        ours, peer = results["implementations"]["neat_edge"], results["implementations"]["titans_pytorch"]
        results["speedup"] = {m: ours[m]["tokens_per_s"] / peer[m]["tokens_per_s"] for m in ("inference", "train")}
    return results


def memory_command(
    dim: int = typer.Option(256, "--dim"), heads: int = typer.Option(4, "--heads"),
    chunk: int = typer.Option(64, "--chunk"), tokens: int = typer.Option(1024, "--tokens"),
    depth: int = typer.Option(2, "--depth"), expansion: int = typer.Option(4, "--expansion"),
    batch: int = typer.Option(1, "--batch"), runs: int = typer.Option(5, "--runs", min=1),
    warmup: int = typer.Option(2, "--warmup", min=0),
    json_out: Path | None = typer.Option(None, "--json", help="Write results as JSON here."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
):
    """Tokens/s of the Titans memory layer: neat_edge vs titans-pytorch (inference and training)."""
    with console.status("benchmarking memory layers..."):
        results = bench_memory(dim, heads, chunk, tokens, depth, expansion, batch, runs, warmup)
    table = Table(title=f"Titans memory layer — dim {dim}, {heads} heads, chunk {chunk}, {tokens} tokens, depth {depth}")
    for col in ("implementation", "inference ms", "inference tok/s", "train ms", "train tok/s"):
        table.add_column(col, justify="right")
    for name, r in results["implementations"].items():
        table.add_row(name, f"{r['inference']['median_ms']:.1f}", f"{r['inference']['tokens_per_s']:.0f}",
                      f"{r['train']['median_ms']:.1f}", f"{r['train']['tokens_per_s']:.0f}")
    console.print(table)
    if "speedup" in results:
        console.print(f"speed-up vs titans-pytorch: inference {results['speedup']['inference']:.2f}x, "
                      f"train {results['speedup']['train']:.2f}x")
    else:
        console.print(f"[yellow]{results['titans_pytorch_error']}[/yellow]")
    if json_out:
        atomic_write_json(json_out, results)
