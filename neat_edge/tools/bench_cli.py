"""`neat-bench`: size, latency, throughput, memory and bits/byte of a model per backend × precision,
measured the same way for all (tools/bench_runner.py); `neat-bench memory`: the Titans memory layer.

    neat-bench BUNDLE_OR_CHECKPOINT [--backends …] [--precisions …] [--segment-len …] [--batch …]
               [--runs N] [--warmup N] [--data FILE] [--json OUT] [--plot OUT.png]

Precisions other than the bundle's own are exported into a cache (tools/bench_bundles.py). The
PyTorch backends run the fp32 checkpoint (`torch`, `torch:cuda`; `:compile` = torch.compile,
`:cudagraphs` = torch.compile mode="reduce-overhead"); ONNX Runtime runs the graph of each precision.
"""

from __future__ import annotations

import time
from pathlib import Path

from neat_edge.tools import loading

with loading():  # a Ctrl-C while the CLI loads: `error: interrupted`, exit 130
    import numpy as np
    import typer
    from rich.table import Table

    from neat_edge.errors import NeatError
    from neat_edge.fileio import atomic_write_json
    from neat_edge.tools.common import console, run_app

DISPATCH_PROMPT_BYTES, DISPATCH_GENERATE_BYTES = 256, 512
GENERATE_BYTES = 512


def bench_dispatch(session, prompt: bytes, gen_bytes: int) -> dict:
    """Transformer² two-pass cost: classifier dispatch (pass 1 over the prompt + mixing z) as a share
    of the end-to-end time of dispatch + generating `gen_bytes` bytes after the prompt."""
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


def _combinations(backends: list[str], precisions: list[str]) -> list[tuple[str, str]]:
    """backend × precision; PyTorch runs the fp32 checkpoint only (a reduced-precision torch row would
    measure something no bundle ships)."""
    from neat_edge.tools.bench_runner import parse_bench_backend

    pairs = []
    for b in backends:
        kind = parse_bench_backend(b)[0].partition(":")[0]
        if kind == "torch":
            pairs.append((b, "fp32"))
        else:
            pairs += [(b, p) for p in precisions]
    return pairs


def _split(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise NeatError(f"{what} is empty")
    return items


def _check_backends(names: list[str]) -> None:
    from neat_edge.runtimes.select import parse_backend
    from neat_edge.tools.bench_runner import parse_bench_backend

    for name in names:
        parse_backend(parse_bench_backend(name)[0])  # one-line error on an unknown name


def _table(results: list[dict], title: str) -> Table:
    table = Table(title=title)
    for col in ("backend", "precision", "size MB", "first call ms", "step p50 ms", "p90", "p99",
                "score B/s", "generate B/s", "first byte ms", "byte p50 / p99 ms", "peak MB", "bits/byte", "dispatch %"):
        table.add_column(col, justify="right")
    for r in results:
        if "error" in r:
            table.add_row(r["backend"], r["precision"], *["-"] * 11, f"[red]{r['error'][:40]}[/red]")
            continue
        lat, per_byte = r["step_latency_ms"], r["per_byte_latency_ms"]
        share = r.get("dispatch_overhead")
        table.add_row(r["backend"], r["precision"], f"{r['size_mb']:.1f}", f"{r['first_call_ms']:.1f}",
                      f"{lat['p50']:.2f}", f"{lat['p90']:.2f}", f"{lat['p99']:.2f}",
                      f"{r['score_bytes_per_s']:.0f}", f"{r['generate_bytes_per_s']:.0f}",
                      f"{r['time_to_first_byte_ms']:.1f}", f"{per_byte['p50']:.2f} / {per_byte['p99']:.2f}",
                      f"{r['peak_memory_mb']:.1f}", f"{r['bits_per_byte']:.4f}",
                      "-" if share is None else f"{100 * share:.2f}")
    return table


def bench_command(
    bundle: str = typer.Argument(..., help="Bundle directory, checkpoint directory, preset name or 'default'."),
    backends: str = typer.Option("torch,onnxruntime", "--backends",
                                 help="Comma-separated: torch, torch:cuda, torch[:cuda]:compile, torch[:cuda]:cudagraphs, "
                                      "onnxruntime[:cuda], coreml, tensorrt."),
    precisions: str | None = typer.Option(None, "--precisions",
                                          help="Comma-separated fp32, fp16, int8 (ONNX graphs; default: the bundle's own, "
                                               "else fp32). Missing ones are exported into --cache."),
    segment_len: int | None = typer.Option(None, "--segment-len", min=1,
                                           help="Bytes per timed step (≤ the model's segment; default: the model's)."),
    batch: int = typer.Option(1, "--batch", min=1, max=4096, help="Streams per timed step (step latency)."),
    data: Path | None = typer.Option(None, "--data", "--corpus", help="Text to score for bits/byte and throughput "
                                                                      "(default: CPython's LICENSE.txt)."),
    segments: int = typer.Option(32, "--segments", min=1, max=1 << 16, help="Segments of --data to score."),
    runs: int = typer.Option(50, "--runs", min=1, help="Timed step runs."),
    warmup: int = typer.Option(5, "--warmup", min=0, help="Untimed warm-up steps."),
    generate_bytes: int = typer.Option(GENERATE_BYTES, "--generate-bytes", min=1,
                                       help="Bytes generated for the generation rate."),
    dispatch_generate_bytes: int = typer.Option(
        DISPATCH_GENERATE_BYTES, "--dispatch-generate-bytes", min=0,
        help="dispatch_overhead: classifier dispatch on a 256-byte prompt as a share of it plus generating "
             "this many bytes (0 = skip)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for PyTorch and ONNX Runtime alike."),
    cache: Path | None = typer.Option(None, "--cache", help="Where bundles of other precisions are exported "
                                                           "(default ~/.cache/neat-edge/bench)."),
    decode_breakdown: bool = typer.Option(False, "--decode-breakdown",
                                          help="Per decode graph: runs per generated byte, ms per run (p50), nodes "
                                               "after ONNX Runtime's optimisation; share of time outside the runtime."),
    json_out: Path | None = typer.Option(None, "--json", help="Write results as JSON here."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a PNG plot here (matplotlib)."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
):
    """Benchmark backends × precisions: size, first call, step p50/p90/p99, scoring and generation
    bytes/s, peak memory, bits/byte."""
    from neat_edge.bundle import open_bundle
    from neat_edge.export.verify import read_corpus
    from neat_edge.tools.bench_bundles import ONNX_PRECISIONS, BundleResolver
    from neat_edge.tools.bench_runner import BenchCase, parse_bench_backend, time_interleaved

    names = _split(backends, "--backends")
    _check_backends(names)
    resolver = BundleResolver(bundle, cache, log=console.print)
    wanted = _split(precisions, "--precisions") if precisions else [resolver.given_precision() or "fp32"]
    for p in wanted:
        if p not in ONNX_PRECISIONS:
            raise NeatError(f"unknown precision '{p}' (choose from {', '.join(ONNX_PRECISIONS)})")
    if plot is not None and plot.suffix.lower() != ".png":
        raise NeatError(f"--plot writes a PNG: give a .png path, not {plot}")
    if plot is not None:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise NeatError("--plot needs matplotlib (pip install matplotlib)")
    if threads:
        import torch

        torch.set_num_threads(threads)
    cases, results, cfg = [], [], None
    for name, precision in _combinations(names, wanted):
        needs_graph = parse_bench_backend(name)[0].partition(":")[0] != "torch"
        with console.status(f"preparing {precision} bundle..."):
            path = resolver.bundle_for(precision, needs_graph)
        cfg = open_bundle(path).config
        seg_len = segment_len or cfg.segment_len
        if seg_len > cfg.segment_len:
            raise NeatError(f"--segment-len {seg_len} is longer than the model's segment ({cfg.segment_len} bytes)")
        text, _ = read_corpus(data, segments, cfg.segment_len)
        if len(text) < seg_len:
            raise NeatError(f"--data holds {len(text)} bytes, fewer than one {seg_len}-byte segment")
        with console.status(f"opening {name} {precision}..."):
            try:
                cases.append(BenchCase(path, name, precision, text, batch, threads, seg_len))
            except NeatError as exc:  # one backend that cannot run here does not end the table
                if len(names) == 1 and len(wanted) == 1:
                    raise
                results.append({"backend": name, "precision": precision, "error": str(exc)})
    with console.status(f"timing {runs} steps of {len(cases)} backends, interleaved..."):
        time_interleaved([c.timer for c in cases], runs, warmup)
    for case in cases:
        def dispatch(session, text=case.data):
            if not dispatch_generate_bytes:
                return {"dispatch_overhead": None, "dispatch": {"share": None, "skipped": "--dispatch-generate-bytes 0"}}
            d = bench_dispatch(session, text[:DISPATCH_PROMPT_BYTES], dispatch_generate_bytes)
            return {"dispatch_overhead": d["share"], "dispatch": d}

        with console.status(f"scoring and generating with {case.backend} {case.precision}..."):
            results.append(case.finish(generate_bytes, dispatch, decode_breakdown))
    console.print(_table(results, f"neat-bench — {bundle} ({cfg.name}, segment {segment_len or cfg.segment_len} bytes, "
                                  f"batch {batch}{f', {threads} threads' if threads else ''})"))
    if decode_breakdown:
        from neat_edge.tools.decode_breakdown import breakdown_table

        for r in results:
            if "graphs" in r.get("decode_breakdown", {}):
                console.print(breakdown_table(r["decode_breakdown"], f"decode breakdown — {r['backend']} {r['precision']}"))
    report = {"results": results, "source": bundle, "model": cfg.name, "segment_len": segment_len or cfg.segment_len,
              "batch": batch, "threads": threads}
    if json_out:
        atomic_write_json(json_out, report)
    if plot:
        from neat_edge.tools.bench_plot import plot_results

        plot_results(results, plot, f"neat-bench — {cfg.name}")
        console.print(f"plot written: {plot}")


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(bench_command)


def main() -> None:
    """`neat-bench BUNDLE ...` benchmarks a bundle; `neat-bench memory ...` the Titans memory layer;
    `neat-bench train ...` the training step against a same-size transformer (tools/bench_train.py)."""
    import sys

    if len(sys.argv) > 1 and sys.argv[1] in ("memory", "train"):
        sub = sys.argv[1]

        def sub_app():  # built inside run_app: the sub-commands import torch, and a Ctrl-C may come meanwhile
            if sub == "memory":
                from neat_edge.tools.bench_memory import memory_command as command
            else:
                from neat_edge.tools.bench_train import train_bench_command as command

            built = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
            built.command()(command)
            return built

        sys.argv = [f"{sys.argv[0]} {sub}", *sys.argv[2:]]
        run_app(sub_app)
    else:
        run_app(app)
