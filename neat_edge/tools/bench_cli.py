"""`neat-bench`: latency and throughput of a bundle on each backend, measured the same way."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from neat_edge.errors import NeatError
from neat_edge.fileio import atomic_write_json
from neat_edge.tools.common import console, run_app


def _artifact_mb(bundle, backend: str) -> float:
    if backend.startswith("onnxruntime"):
        path, _ = bundle.graph("onnx")
        return path.stat().st_size / 1e6
    return sum(p.stat().st_size for p in bundle.checkpoint_dir.iterdir()) / 1e6


DISPATCH_PROMPT_BYTES, DISPATCH_GENERATE_BYTES = 256, 512


def bench_dispatch(session, prompt: bytes, gen_bytes: int) -> dict:
    """Transformer² two-pass cost: classifier dispatch (pass 1 over the prompt + mixing z) as a share
    of the end-to-end time of dispatch + generating `gen_bytes` bytes after the prompt."""
    from neat_edge.errors import NeatError

    session.reset()
    t0 = time.perf_counter()
    try:
        chosen = session.dispatch(prompt, "classifier")
    except NeatError as exc:  # no experts / no trained dispatch head in this bundle
        return {"share": None, "skipped": str(exc)}
    session.generate(prompt, gen_bytes)
    total = time.perf_counter() - t0
    session.svf_z = np.ones_like(session.svf_z)
    session.reset()
    return {"share": chosen.seconds / total, "dispatch_ms": chosen.seconds * 1e3, "end_to_end_ms": total * 1e3,
            "prompt_bytes": len(prompt), "generated_bytes": gen_bytes, "weights": chosen.weights}


def bench_backend(bundle_dir: Path, backend: str, data: bytes, runs: int, warmup: int, gen_bytes: int,
                  dispatch_gen_bytes: int = DISPATCH_GENERATE_BYTES) -> dict:
    from neat_edge.export.bundle import open_bundle
    from neat_edge.export.verify import bits_per_byte
    from neat_edge.runtimes import open_session

    session = open_session(bundle_dir, backend=backend)
    seg = data[: session.config.segment_len]
    t0 = time.perf_counter()
    session.score(seg)
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(warmup):
        session.run_segment(seg)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run_segment(seg)
        times.append((time.perf_counter() - t0) * 1e3)
    session.reset()
    t0 = time.perf_counter()
    logp = session.score(data)
    score_s = time.perf_counter() - t0
    session.reset()
    t0 = time.perf_counter()
    session.generate(b"", gen_bytes)
    gen_s = time.perf_counter() - t0
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    dispatch = bench_dispatch(session, data[:DISPATCH_PROMPT_BYTES], dispatch_gen_bytes) if dispatch_gen_bytes \
        else {"share": None, "skipped": "--dispatch-generate-bytes 0"}
    return {"backend": backend, "precision": "fp32", "size_mb": round(_artifact_mb(open_bundle(bundle_dir), backend), 3),
            "dispatch_overhead": dispatch["share"], "dispatch": dispatch,
            "first_call_ms": round(first_ms, 3),
            "step_latency_ms": {"p50": float(p50), "p90": float(p90), "p99": float(p99)},
            "score_bytes_per_s": len(data) / score_s, "generate_bytes_per_s": gen_bytes / gen_s,
            "bits_per_byte": bits_per_byte(logp)}


def bench_command(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    backends: str = typer.Option("torch,onnxruntime", "--backends", help="Comma-separated backends."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Text to score (default: CPython's LICENSE.txt)."),
    segments: int = typer.Option(32, "--segments", min=1, help="Segments of the corpus to score."),
    runs: int = typer.Option(50, "--runs", min=1, help="Timed step runs."),
    warmup: int = typer.Option(5, "--warmup", min=0, help="Untimed warm-up steps."),
    generate_bytes: int = typer.Option(128, "--generate-bytes", min=1, help="Bytes to generate for the generation rate."),
    dispatch_generate_bytes: int = typer.Option(
        DISPATCH_GENERATE_BYTES, "--dispatch-generate-bytes", min=0,
        help="dispatch_overhead: classifier dispatch on a 256-byte prompt as a share of it plus generating "
             "this many bytes (0 = skip)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write results as JSON here."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
):
    """Benchmark a bundle: size, first call, step latency p50/p90/p99, scoring and generation rates."""
    from neat_edge.export.bundle import open_bundle
    from neat_edge.export.verify import read_corpus

    names = [b.strip() for b in backends.split(",") if b.strip()]
    if not names:
        raise NeatError("--backends is empty")
    cfg = open_bundle(bundle).config
    data, _ = read_corpus(corpus, segments, cfg.segment_len)
    results = []
    for name in names:
        with console.status(f"benchmarking {name}..."):
            results.append(bench_backend(bundle, name, data, runs, warmup, generate_bytes, dispatch_generate_bytes))
    table = Table(title=f"neat-bench — {bundle} (segment {cfg.segment_len} bytes)")
    for col in ("backend", "precision", "size MB", "first call ms", "step p50 ms", "p90", "p99",
                "score B/s", "generate B/s", "bits/byte", "dispatch %"):
        table.add_column(col, justify="right")
    for r in results:
        lat = r["step_latency_ms"]
        table.add_row(r["backend"], r["precision"], f"{r['size_mb']:.1f}", f"{r['first_call_ms']:.1f}",
                      f"{lat['p50']:.2f}", f"{lat['p90']:.2f}", f"{lat['p99']:.2f}",
                      f"{r['score_bytes_per_s']:.0f}", f"{r['generate_bytes_per_s']:.0f}", f"{r['bits_per_byte']:.4f}",
                      "-" if r["dispatch_overhead"] is None else f"{100 * r['dispatch_overhead']:.2f}")
    console.print(table)
    if json_out:
        atomic_write_json(json_out, {"results": results})


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(bench_command)


def main() -> None:
    """`neat-bench BUNDLE ...` benchmarks a bundle; `neat-bench memory ...` the Titans memory layer."""
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "memory":
        from neat_edge.tools.bench_memory import memory_command

        memory_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        memory_app.command()(memory_command)
        sys.argv = [f"{sys.argv[0]} memory", *sys.argv[2:]]
        run_app(memory_app)
    else:
        run_app(app)
