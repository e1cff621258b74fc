"""`neat parity`: score a corpus as one stream on each backend and compare with PyTorch."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from neat_edge.errors import NeatError
from neat_edge.fileio import atomic_write_json
from neat_edge.tools.common import console


def parity_command(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    backends: str = typer.Option("onnxruntime", "--backends", help="Comma-separated: onnxruntime,torch"),
    corpus: Path | None = typer.Option(None, "--corpus", help="Text file (default: CPython's LICENSE.txt)."),
    segments: int | None = typer.Option(None, "--segments", min=1, help="Use the first N segments only."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the report as JSON here."),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="Exit non-zero above this max |Δ log-prob|."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
):
    """Compare backends against the PyTorch reference over chained segments with state carried."""
    from neat_edge.export.verify import parity_report, read_corpus
    from neat_edge.runtimes import open_session

    names = [b.strip() for b in backends.split(",") if b.strip()]
    if not names:
        raise NeatError("--backends is empty")
    reference = open_session(bundle, backend="torch")
    sessions = {name: open_session(bundle, backend=name) for name in names}
    data, corpus_name = read_corpus(corpus, segments, reference.config.segment_len)
    with console.status(f"scoring {len(data)} bytes on {', '.join(['torch', *names])}..."):
        report = parity_report(reference, sessions, data)
    report["corpus"] = corpus_name
    ref = report["reference"]
    table = Table(title=f"parity vs torch — {corpus_name}, {ref['bytes']} bytes, {ref['segments']} segments")
    for col in ("backend", "max |Δ log-prob|", "bits/byte", "top-1 agreement", "state max rel Δ"):
        table.add_column(col, justify="right")
    table.add_row("torch (reference)", "0", f"{ref['bits_per_byte']:.4f}", "1.0000", "0")
    for name, r in report["backends"].items():
        table.add_row(name, f"{r['max_abs_logprob_diff']:.2e}", f"{r['bits_per_byte']:.4f}",
                      f"{r['top1_agreement']:.4f}", f"{r['state_max_rel_diff']:.2e}")
    console.print(table)
    if json_out:
        atomic_write_json(json_out, report)
    worst = max(r["max_abs_logprob_diff"] for r in report["backends"].values())
    if worst > tolerance:
        raise NeatError(f"parity failed: max |Δ log-prob| {worst:.3g} > {tolerance:g}")
