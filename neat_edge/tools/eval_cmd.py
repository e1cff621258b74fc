"""`neat eval`: bits-per-byte of real files through the session, next to xz -9 and bzip2 -9."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from neat_edge.fileio import atomic_write_json
from neat_edge.tools.common import console


def eval_command(
    model: str = typer.Argument(..., help="A bundle, a checkpoint directory, or 'default'."),
    data: list[Path] = typer.Option(..., "--data", help="Files or directories: --data A B C..."),
    more_data: list[Path] | None = typer.Argument(None, hidden=True, help="Further paths after --data."),
    memory: str = typer.Option("carry", "--memory",
                               help="carry (the state flows through each document) or reset-each-segment "
                                    "(the Titans memory goes back to M_0 after every segment)."),
    split: str = typer.Option("all", "--split", help="all, or only the 'heldout' / 'train' files of the "
                                                     "directories (the split `neat train` uses)."),
    backend: str | None = typer.Option(None, "--backend", help="Bundle: onnxruntime (default), torch, ...; "
                                                              "checkpoint: torch."),
    max_bytes: int | None = typer.Option(None, "--max-bytes", min=1, max=1 << 50, help="Evaluate at most this many bytes."),
    min_doc_bytes: int = typer.Option(0, "--min-doc-bytes", min=0, help="Skip documents shorter than this "
                                                                        "(long-document evaluation)."),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="Also compress with xz -9, bzip2 -9."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the report as JSON here."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
):
    """Bits-per-byte of every document (each from a fresh stream), with the memory carried or reset."""
    from neat_edge.errors import NeatError
    from neat_edge.evaluation import (
        MEMORY_MODES,
        compressor_baselines,
        evaluate_documents,
        open_eval_session,
        read_documents,
    )
    from neat_edge.training.data import split_files

    if memory not in MEMORY_MODES:
        raise NeatError(f"unknown --memory '{memory}' (choose from {', '.join(MEMORY_MODES)})")
    files = split_files([*data, *(more_data or [])], split)
    if not files:
        raise NeatError(f"no files in the '{split}' split of the paths given")
    docs = read_documents(files, max_bytes, min_doc_bytes)
    session = open_eval_session(model, backend)
    total = sum(d.size for d in docs)
    columns = [TextColumn(f"[bold]eval ({memory})"), BarColumn(), DownloadColumn(binary_units=True),
               TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("eval", total=total)
        report = evaluate_documents(session, docs, memory, on_document=lambda n: progress.advance(task, n))
    report.update({"model": str(model), "backend": session.backend.name, "split": split})
    if baselines:
        report["baselines"] = compressor_baselines(docs)
    table = Table(title=f"{model} — {report['documents']} documents, {total:,} bytes ({split})")
    table.add_column("model")
    table.add_column("bits/byte", justify="right")
    table.add_row(f"neat ({memory})", f"{report['bits_per_byte']:.4f}")
    for name, b in report.get("baselines", {}).items():
        table.add_row(name, f"{b['bits_per_byte']:.4f}")
    console.print(table)
    if json_out:
        atomic_write_json(json_out, report)
