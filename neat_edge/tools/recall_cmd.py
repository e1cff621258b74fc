"""`neat recall`: the recall benchmark (neat_edge/recall.py) on a bundle or a checkpoint, any backend."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from neat_edge.fileio import atomic_write_json
from neat_edge.tools.common import console


def recall_command(
    model: str = typer.Argument(..., help="A bundle, a checkpoint directory, or 'default'."),
    filler: list[Path] = typer.Option(..., "--filler", help="Files or directories whose bytes fill the "
                                      "documents between the string and its repeat: --filler A B C..."),
    more_filler: list[Path] | None = typer.Argument(None, hidden=True, help="Further paths after --filler."),
    backend: str | None = typer.Option(None, "--backend", help="Bundle: onnxruntime (default), torch, ...; "
                                                              "checkpoint: torch."),
    distances: str = typer.Option("256,1024,4096,16384", "--distances",
                                  help="Bytes between the end of the string and the start of its repeat."),
    trials: int = typer.Option(20, "--trials", min=1, max=1 << 16,
                               help="Documents per distance (each run carried and reset)."),
    length: int = typer.Option(32, "--length", min=32, max=1 << 16,
                               help="Bytes of the random string (letters and digits, >= 32)."),
    seed: int = typer.Option(0, "--seed", help="Seeds strings, filler offsets and lead lengths."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the report as JSON here."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
):
    """Recall of a random string repeated after filler: bits/byte of the repeat and greedy exact match,
    with the Titans memory carried and reset at every segment."""
    from neat_edge.evaluation import open_eval_session
    from neat_edge.recall import load_filler, make_trials, parse_distances, recall_benchmark

    wanted = parse_distances(distances)
    data, n_files = load_filler([*filler, *(more_filler or [])])
    session = open_eval_session(model, backend)
    cfg = session.config
    plan = make_trials(data, wanted, trials, length, cfg.segment_len, seed, cfg.context_len)
    columns = [TextColumn("[bold]recall"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("recall", total=2 * trials * len(wanted))
        report = recall_benchmark(session, plan, on_trial=lambda: progress.advance(task))
    report = {"model": str(model), "backend": session.backend.name, "seed": seed, "trials": trials,
              "string_bytes": length, "filler": {"files": n_files, "bytes": len(data)}, **report}
    table = Table(title=f"{model}: a {length}-byte random string repeated after filler, {trials} trials per "
                        f"distance; bits/byte of its bytes after the first 8 (uniform over the alphabet: "
                        f"{report['uniform_bits_per_byte']:.2f}); memory carried / reset each segment")
    for name in ("distance", "in attention", "first", "repeat", "ratio", "exact match", "byte match"):
        table.add_column(name, justify="right")
    for row in report["distances"]:
        rb, em, bm = row["repeat_bits_per_byte"], row["exact_match"], row["byte_match"]
        share = row["inside_attention_share"]
        table.add_row(f"{row['distance_bytes']:,}", "yes" if share == 1 else "no" if share == 0 else f"{share:.0%}",
                      f"{row['first_bits_per_byte']:.3f}",
                      f"{rb['carry']:.3f} / {rb['reset']:.3f}", f"{row['repeat_carry_over_reset']:.1%}",
                      f"{em['carry']:.2f} / {em['reset']:.2f}", f"{bm['carry']:.2f} / {bm['reset']:.2f}")
    console.print(table)
    if json_out:
        atomic_write_json(json_out, report)
