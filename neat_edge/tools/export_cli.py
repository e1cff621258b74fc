"""`neat-export` (also `neat export`): build a bundle and verify it against PyTorch."""

from __future__ import annotations

from pathlib import Path

import typer

from neat_edge.errors import NeatError
from neat_edge.tools.common import console, run_app

AVAILABLE = ("onnx",)
PLANNED = ("coreml", "tensorrt")


def export_command(
    out: Path = typer.Option(..., "--out", help="Bundle directory to write."),
    target: str = typer.Option("onnx", "--target", help="onnx (or all: every target buildable here)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Checkpoint directory to export."),
    preset_name: str | None = typer.Option(None, "--preset", help="Export a preset's seeded init instead."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Text for the parity check (default: CPython's LICENSE.txt)."),
    segments: int = typer.Option(40, "--segments", min=1, help="Segments of the corpus for the parity check."),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="Max |Δ log-prob| accepted by the parity check."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Run the parity check after export."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
):
    """Export a model (default: the bundled trained tiny checkpoint) to a verified bundle."""
    from neat_edge.export.pipeline import export_bundle
    from neat_edge.model.checkpoint import load

    if checkpoint and preset_name:
        raise NeatError("give either --checkpoint or --preset, not both")
    if target == "all":
        targets = AVAILABLE
        console.print(f"[yellow]not built:[/yellow] {', '.join(PLANNED)} (not supported by this version yet)")
    elif target in AVAILABLE:
        targets = (target,)
    elif target in PLANNED:
        raise NeatError(f"target '{target}' is not supported by this version yet (available: {', '.join(AVAILABLE)})")
    else:
        raise NeatError(f"unknown target '{target}' (choose from {', '.join(AVAILABLE + PLANNED)}, all)")
    source = str(checkpoint) if checkpoint else (preset_name or "default")
    model = load(source)
    console.print(f"exporting [bold]{source}[/bold] ({model.cfg.name}) -> {out}")
    with console.status("exporting and verifying..."):
        manifest = export_bundle(model, out, targets, verify=verify, corpus=corpus, segments=segments,
                                 tolerance=tolerance, log=console.print, patching=patching_for(source, model))
    parity = manifest.get("parity")
    if parity:
        for name, r in parity["backends"].items():
            console.print(f"parity {name} vs torch over {parity['reference']['segments']} segments: "
                          f"max |Δ log-prob| {r['max_abs_logprob_diff']:.2e}, top-1 {r['top1_agreement']:.4f}, "
                          f"bits/byte {r['bits_per_byte']:.4f}")
    console.print(f"[green]bundle written:[/green] {out}")


def patching_for(source: str, model):
    """(entropy model, patcher) for a model with entropy patching: from its checkpoint directory,
    or, for a preset, the seeded entropy model calibrated on the default corpus."""
    if model.cfg.patching != "entropy":
        return None
    from neat_edge.config import PRESETS
    from neat_edge.export.verify import default_corpus
    from neat_edge.model.checkpoint import DEFAULT_CHECKPOINT
    from neat_edge.model.entropy import default_patching, load_patching

    if source in PRESETS and not Path(source).exists():
        return default_patching(model.cfg, default_corpus()[0])
    directory = DEFAULT_CHECKPOINT if source == "default" else Path(source)
    found = load_patching(directory)
    if found is None:
        raise NeatError(f"{directory} uses entropy patching but holds no entropy model "
                        "(entropy_config.json, entropy_model.safetensors, patcher.json)")
    return found


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(export_command)


def main() -> None:
    run_app(app)
