"""`neat train`: train a model on real bytes and write a checkpoint directory."""

from __future__ import annotations

from pathlib import Path

import typer

from neat_edge.config import NeatConfig, preset
from neat_edge.errors import NeatError
from neat_edge.tools.common import console
from neat_edge.training.train import TrainOptions, train


def train_command(
    data: list[Path] = typer.Option(..., "--data", help="Training files or directories: --data A B C..."),
    more_data: list[Path] | None = typer.Argument(None, hidden=True, help="Further paths after --data."),
    out: Path = typer.Option(..., "--out", help="Checkpoint directory to write."),
    preset_name: str = typer.Option("tiny", "--preset", help="Model preset: tiny, small, base."),
    config: Path | None = typer.Option(None, "--config", help="A config.json instead of a preset."),
    steps: int = typer.Option(1000, "--steps", min=1),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    segments: int = typer.Option(4, "--segments", min=1, help="Segments per window (memory carried)."),
    tbptt: int = typer.Option(4, "--tbptt", min=1, help="Backprop through at most this many segments."),
    lr: float = typer.Option(2e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    entropy_model: bool = typer.Option(False, "--entropy-model", help="Train the BLT entropy model instead."),
    entropy_checkpoint: Path | None = typer.Option(None, "--entropy-checkpoint",
                                                   help="Trained entropy model (for entropy patching)."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
):
    """Train a model (AdamW, cosine schedule, clipping, chained segments) and save a checkpoint."""
    cfg = NeatConfig.load(config) if config else preset(preset_name)
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise NeatError("--device cuda asked for, but no CUDA device is available")
    opts = TrainOptions(steps=steps, batch_size=batch_size, segments=segments, tbptt=tbptt, lr=lr, seed=seed,
                        device=device, entropy_checkpoint=str(entropy_checkpoint) if entropy_checkpoint else None)
    paths = [*data, *(more_data or [])]
    if entropy_model:
        from neat_edge.model.entropy import EntropyConfig
        from neat_edge.training.train import train_entropy

        result = train_entropy(EntropyConfig(segment_len=cfg.segment_len), paths, out, opts)
    else:
        result = train(cfg, paths, out, opts)
    console.print(f"[green]saved[/green] {out}  params={result['parameters']:,}  "
                  f"held-out bits/byte={result['heldout_bits_per_byte']:.4f}  "
                  f"({result['train_seconds']:.0f}s, {result['bytes_per_second']:.0f} bytes/s)")
