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
    backends: str = typer.Option("onnxruntime", "--backends",
                                 help="Comma-separated KIND[:DEVICE]: onnxruntime[:cuda|coreml], torch[:cuda], "
                                      "coreml[:cpu|gpu|ane], tensorrt; or all (every backend that can run it here)."),
    reference_name: str = typer.Option("torch", "--reference", help="The reference backend (torch = fp32 PyTorch, CPU)."),
    bpb_tolerance: float = typer.Option(0.01, "--bpb-tolerance",
                                        help="Exit non-zero above this |Δ bits/byte| for an fp16 / int8 backend."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Text file (default: CPython's LICENSE.txt)."),
    segments: int | None = typer.Option(None, "--segments", min=1, help="Use the first N segments only."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the report as JSON here."),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="Exit non-zero above this max |Δ log-prob|."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
):
    """Compare backends against the PyTorch reference over chained segments with state carried."""
    from neat_edge.bundle import open_bundle
    from neat_edge.export.verify import backend_passed, parity_report, read_corpus
    from neat_edge.runtimes import open_session
    from neat_edge.runtimes.select import available_backends, graph_precision, parse_backend

    names = [b.strip() for b in backends.split(",") if b.strip()]
    if not names:
        raise NeatError("--backends is empty")
    opened = open_bundle(bundle)
    unavailable = {}
    if names == ["all"]:
        names, unavailable = available_backends(opened)
    data, corpus_name = read_corpus(corpus, segments, opened.config.segment_len)  # a bad corpus fails first
    reference = open_session(bundle, backend=reference_name)
    sessions = {name: open_session(bundle, backend=name) for name in names}
    precisions = {name: graph_precision(opened, parse_backend(name)[0]) for name in names}
    with console.status(f"scoring {len(data)} bytes on {', '.join([reference_name, *names])}..."):
        report = parity_report(reference, sessions, data, precisions)
    report["corpus"] = corpus_name
    for r in report["backends"].values():
        r["passed"] = backend_passed(r, tolerance, bpb_tolerance)
    report["unavailable"] = unavailable
    console.print(parity_table(report, corpus_name))
    if json_out:
        atomic_write_json(json_out, report)
    failed = [name for name, r in report["backends"].items() if not r["passed"]]
    if failed:
        worst = max(report["backends"][n]["max_abs_logprob_diff"] for n in failed)
        raise NeatError(f"parity failed for {', '.join(failed)}: max |Δ log-prob| {worst:.3g} "
                        f"(fp32 tolerance {tolerance:g}, fp16/int8 tolerance {bpb_tolerance:g} bits/byte)")


def parity_table(report: dict, corpus_name: str) -> Table:
    """One table: backend, precision, max |Δ log-prob|, bits/byte and its delta, top-1 agreement,
    state drift (max relative difference of the carried state) after N segments."""
    ref = report["reference"]
    n = ref["state_drift_segments"]  # full segments: the state the session committed
    table = Table(title=f"parity vs {ref['backend']} — {corpus_name}, {ref['bytes']} bytes, {ref['segments']} segments")
    for col in ("backend", "precision", "max |Δ log-prob|", "bits/byte", "Δ bits/byte", "top-1 agreement",
                f"state drift after {n} segments", "ok"):
        table.add_column(col, justify="right")
    table.add_row(f"{ref['backend']} (reference)", "fp32", "0", f"{ref['bits_per_byte']:.4f}", "0", "1.0000", "0", "")
    for name, r in report["backends"].items():
        table.add_row(name, r["precision"], f"{r['max_abs_logprob_diff']:.2e}", f"{r['bits_per_byte']:.4f}",
                      f"{r['bits_per_byte_delta']:+.2e}", f"{r['top1_agreement']:.4f}", f"{r['state_max_rel_diff']:.2e}",
                      "yes" if r["passed"] else "NO")
    for name, why in report.get("unavailable", {}).items():
        table.add_row(name, "—", "—", "—", "—", "—", "—", f"not here: {why}")
    return table
