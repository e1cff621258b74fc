"""`neat profile`: time and memory per component of one step (PyTorch), on real bytes."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from neat_edge.fileio import atomic_write_json
from neat_edge.tools.common import check_torch_device, console


def profile_command(
    model: str = typer.Argument("default", help="A checkpoint directory, a bundle, a preset, or 'default'."),
    data: Path | None = typer.Option(None, "--data", help="Bytes to run (default: CPython's LICENSE.txt)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    batch: int = typer.Option(1, "--batch", min=1, max=4096, help="Streams per step."),
    segments: int = typer.Option(16, "--segments", min=1, max=1 << 16, help="Measured segments (state carried)."),
    warmup: int = typer.Option(2, "--warmup", min=0, max=1024, help="Segments run first and not measured."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the report as JSON here."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
):
    """Time (ms per segment, share of the step) and peak memory of each component."""
    from neat_edge.export.verify import read_corpus
    from neat_edge.model.checkpoint import load
    from neat_edge.model.entropy import load_patching
    from neat_edge.profiling import profile_step

    check_torch_device(device)
    path = Path(model)
    if (path / "neat.json").is_file():  # a bundle: profile the PyTorch checkpoint it was exported from
        from neat_edge.bundle import open_bundle

        path = open_bundle(path).checkpoint_dir  # checked like every file a bundle hands out
        model = str(path)
    net = load(model)
    patching = load_patching(path) if net.cfg.patching == "entropy" else None
    text, corpus = read_corpus(data, None, net.cfg.segment_len)
    with console.status(f"profiling {segments} segments of {corpus} on {device}..."):
        report = profile_step(net, text, batch, segments, warmup, patching, device)
    report.update({"model": str(model), "data": corpus})
    table = Table(title=f"{model} — batch {batch} × {report['segment_len']} bytes, {report['device']}, "
                        f"{report['bytes_per_second']:,.0f} bytes/s")
    for col in ("component", "ms / segment", "share of step", "peak memory (MB)", "parameters"):
        table.add_column(col, justify="right" if col != "component" else "left")
    for row in report["components"]:
        if not row["used"]:
            table.add_row(row["name"], "—", "not used (fixed patching)", "—", "0")
            continue
        table.add_row(row["name"], f"{row['ms_per_segment']:.3f}", f"{100 * row['share_of_step']:.1f} %",
                      f"{row['peak_memory_mb']:.2f}", f"{row['parameters']:,}")
    console.print(table)
    if json_out:
        atomic_write_json(json_out, report)
