"""`neat-bench memory`: our closed-form Titans memory layer against titans-pytorch's NeuralMemory,
same sizes, same process, same inputs (titans-pytorch is optional: `pip install titans-pytorch`).

Two peer settings, because titans-pytorch's `chunk_size` is not the paper's chunk:
  titans_pytorch         chunk_size=1, batch_size=CHUNK — the paper's mini-batch rule (Eq 16-18) and
                         ours: one surprise gradient and one set of gates per token, all taken at
                         the weights of the chunk start, weights committed every CHUNK tokens. The
                         peer materialises every per-token gradient with vmap; we need none.
  titans_pytorch_pooled  chunk_size=CHUNK — a coarser rule: one pooled gradient and one gate per
                         CHUNK tokens (16 surprises for 1,024 tokens instead of 1,024).
`speedup` is against the first (same mechanism), `speedup_vs_pooled` against the second."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import typer
from rich.table import Table

from neat_edge.errors import NeatError
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


def bench_memory(dim=256, heads=4, chunk=64, tokens=1024, depth=2, expansion=4, batch=1, runs=5, warmup=2,
                 peer_runs=2, progress=None) -> dict:
    torch.manual_seed(0)
    x = torch.randn(batch, tokens, dim)
    impls = {"neat_edge": (NeuralMemory(dim, heads=heads, depth=depth, chunk_size=chunk, expansion=expansion),
                           runs, warmup)}
    peer_error = None
    try:
        from titans_pytorch import NeuralMemory as PeerMemory

        kwargs = {"dim": dim, "heads": heads, "dim_head": dim // heads,
                  "default_model_kwargs": {"depth": depth, "expansion_factor": float(expansion)}}
        # per-token surprise is seconds per call in the peer: fewer runs, one warm-up
        impls["titans_pytorch"] = (PeerMemory(chunk_size=1, batch_size=chunk, **kwargs), peer_runs, 1)
        impls["titans_pytorch_pooled"] = (PeerMemory(chunk_size=chunk, **kwargs), runs, warmup)
    except ImportError:
        peer_error = "titans-pytorch is not installed (pip install titans-pytorch==0.5.5)"
    results = {"config": {"dim": dim, "heads": heads, "chunk": chunk, "tokens": tokens, "depth": depth,
                          "expansion": expansion, "batch": batch, "threads": torch.get_num_threads()},
               "implementations": {}}
    for name, (module, n_runs, n_warmup) in impls.items():
        results["implementations"][name] = {}
        for mode in ("inference", "train"):
            if progress:
                progress(f"{name} {mode}")
            results["implementations"][name][mode] = _measure(module, x, n_runs, n_warmup, mode == "train")
    if peer_error:
        results["titans_pytorch_error"] = peer_error
    else:
        impl = results["implementations"]
        for key, peer in (("speedup", "titans_pytorch"), ("speedup_vs_pooled", "titans_pytorch_pooled")):
            results[key] = {m: impl["neat_edge"][m]["tokens_per_s"] / impl[peer][m]["tokens_per_s"]
                            for m in ("inference", "train")}
    return results


def memory_command(
    dim: int = typer.Option(256, "--dim", min=1, max=8192), heads: int = typer.Option(4, "--heads", min=1, max=256),
    chunk: int = typer.Option(64, "--chunk", min=1, max=1 << 16),
    tokens: int = typer.Option(1024, "--tokens", min=1, max=1 << 20),
    depth: int = typer.Option(2, "--depth", min=1, max=4), expansion: int = typer.Option(4, "--expansion", min=1, max=16),
    batch: int = typer.Option(1, "--batch", min=1, max=4096), runs: int = typer.Option(5, "--runs", min=1),
    warmup: int = typer.Option(2, "--warmup", min=0),
    peer_runs: int = typer.Option(2, "--peer-runs", min=1, help="Timed runs of the slow per-token peer."),
    json_out: Path | None = typer.Option(None, "--json", help="Write results as JSON here."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
):
    """Tokens/s of the Titans memory layer: neat_edge vs titans-pytorch (inference and training)."""
    if dim % heads:
        raise NeatError(f"--dim {dim} must be a multiple of --heads {heads}")
    with console.status("benchmarking memory layers...") as status:
        results = bench_memory(dim, heads, chunk, tokens, depth, expansion, batch, runs, warmup, peer_runs,
                               progress=lambda what: status.update(f"benchmarking {what}..."))
    table = Table(title=f"Titans memory layer — dim {dim}, {heads} heads, chunk {chunk}, {tokens} tokens, depth {depth}")
    for col in ("implementation", "inference ms", "inference tok/s", "train ms", "train tok/s"):
        table.add_column(col, justify="right")
    for name, r in results["implementations"].items():
        table.add_row(name, f"{r['inference']['median_ms']:.1f}", f"{r['inference']['tokens_per_s']:.0f}",
                      f"{r['train']['median_ms']:.1f}", f"{r['train']['tokens_per_s']:.0f}")
    console.print(table)
    if "speedup" in results:
        for key, what in (("speedup", "titans-pytorch, same rule (per-token surprise, chunk_size=1, "
                                      f"batch_size={chunk})"),
                          ("speedup_vs_pooled", f"titans-pytorch, pooled per {chunk}-token chunk (chunk_size={chunk})")):
            console.print(f"speed-up vs {what}: inference {results[key]['inference']:.1f}x, "
                          f"train {results[key]['train']:.1f}x")
    else:
        console.print(f"[yellow]{results['titans_pytorch_error']}[/yellow]")
    if json_out:
        atomic_write_json(json_out, results)
