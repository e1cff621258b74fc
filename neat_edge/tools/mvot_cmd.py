"""`neat mvot-eval`: MVoT visual thoughts on held-out FrozenLake episodes, through any backend."""

from __future__ import annotations

from pathlib import Path

import typer

from neat_edge.errors import NeatError
from neat_edge.tools.common import console


def mvot_eval_command(
    bundle: Path = typer.Argument(..., help="Bundle directory (exported from a --visual-task checkpoint)."),
    episodes: int = typer.Option(50, "--episodes", min=1, help="Held-out episodes (maps never trained on)."),
    backend: str = typer.Option("onnxruntime", "--backend", help="onnxruntime[:cpu|cuda|coreml], torch, coreml, ..."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the measurements as JSON here."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
):
    """Task success (interleaved and text-only reasoning), image-token accuracy and pixel MSE."""
    import time

    from rich.progress import Progress

    from neat_edge.bundle import open_bundle
    from neat_edge.model.vq import load_tokenizer
    from neat_edge.runtimes import open_session
    from neat_edge.training.mvot_eval import evaluate_session

    opened = open_bundle(bundle)
    if not opened.manifest.get("images"):
        raise NeatError(f"bundle {bundle} has no image tokenizer (export a checkpoint trained with "
                        "`neat train --visual-task`)")
    tokenizer = load_tokenizer(opened.checkpoint_dir, opened.config)
    session = open_session(bundle, backend=backend)
    if session.image_decoder is None:
        raise NeatError(f"bundle {bundle} has no image decoder graph for backend '{backend}'")
    start = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("mvot-eval", total=episodes)
        result = evaluate_session(session, tokenizer, episodes, progress=lambda: progress.advance(task))
    result.update({"backend": backend, "bundle": str(bundle), "seconds": round(time.perf_counter() - start, 1)})
    for key in ("task_success", "task_success_text_only", "image_token_accuracy", "pixel_mse",
                "tokenizer_pixel_mse", "free_image_token_accuracy"):
        console.print(f"{key:26s} {result[key]:.4f}")
    if json_out is not None:
        from neat_edge.fileio import atomic_write_json

        atomic_write_json(json_out, result)
