"""`neat train`: train a model on real bytes and write a checkpoint directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from neat_edge.config import NeatConfig, preset
from neat_edge.errors import NeatError
from neat_edge.tools.common import check_torch_device, console
from neat_edge.training.step import resolve_mode
from neat_edge.training.train import PRECISIONS, TrainOptions, train


def train_command(
    ctx: typer.Context,
    data: list[Path] = typer.Option(..., "--data", help="Training files or directories: --data A B C..."),
    more_data: list[Path] | None = typer.Argument(None, hidden=True, help="Further paths after --data."),
    out: Path = typer.Option(..., "--out", help="Checkpoint directory to write."),
    preset_name: str | None = typer.Option(None, "--preset", help="Model preset: tiny (default), small, base."),
    config: Path | None = typer.Option(None, "--config", help="A config.json instead of a preset."),
    steps: int = typer.Option(1000, "--steps", min=1),
    batch_size: int = typer.Option(16, "--batch-size", min=1, max=1 << 16),
    segments: int = typer.Option(4, "--segments", min=1, max=4096, help="Segments per window (memory carried)."),
    tbptt: int = typer.Option(4, "--tbptt", min=1, help="Backprop through at most this many segments."),
    lr: float = typer.Option(2e-3, "--lr"),
    seed: int = typer.Option(0, "--seed", help="Seeds the data sampler and torch: same seed, same run."),
    warmup: int = typer.Option(50, "--warmup", min=0, help="Linear warm-up steps before the cosine decay."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16."),
    grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing",
                                            help="Recompute each segment's activations in backward (less memory)."),
    eval_every: int = typer.Option(0, "--eval-every", min=0, help="Held-out bits-per-byte every N steps."),
    eval_bytes: int = typer.Option(65536, "--eval-bytes", min=1, help="Held-out bytes per evaluation."),
    save_every: int = typer.Option(0, "--save-every", min=0, help="Save weights + trainer state every N steps."),
    step_mode: str = typer.Option("auto", "--step-mode", help="How the training step runs: auto (compile on CUDA, "
                                  "eager on the CPU), eager (plain PyTorch), compile (the whole window as one "
                                  "torch.compile graph), graphs (compile + CUDA graphs)."),
    memory_budget: float = typer.Option(1.0, "--memory-budget", min=0.01, max=1.0, help="Compiled steps: the "
                                        "share of saved activations the backward may keep (below 1 it recomputes "
                                        "the cheapest rest: less memory, more FLOPs)."),
    max_minutes: float = typer.Option(0.0, "--max-minutes", min=0.0,
                                      help="Stop after this much training time (resumable with --resume)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run saved in --out (weights, optimizer, RNG)."),
    recall_fraction: float = typer.Option(0.0, "--recall-fraction", help="Share of training windows carrying "
                                          "recall episodes (random strings, records, identifiers, repeated "
                                          "passages, each repeated later in the window); 0 = off."),
    recall_distances: str = typer.Option("200,4000", "--recall-distances", help="A,B: bytes from the end of an "
                                         "episode's first occurrence to its repeat, drawn in [A, B]."),
    entropy_model: bool = typer.Option(False, "--entropy-model", help="Train the BLT entropy model instead."),
    entropy_checkpoint: Path | None = typer.Option(None, "--entropy-checkpoint",
                                                   help="Trained entropy model (for entropy patching)."),
    expert: str | None = typer.Option(None, "--expert", help="Train a Transformer² expert NAME (z only) on --data "
                                      "for --base; writes OUT/NAME.safetensors (OUT = BASE/experts ships it)."),
    domain: str | None = typer.Option(None, "--domain", help="What the expert's data are (listed by `neat experts`)."),
    base: Path | None = typer.Option(None, "--base", help="The trained checkpoint an expert adapts, or that "
                                      "training (text or --visual-task) fine-tunes: --config may then change "
                                      "only the memory step (memory_theta_*)."),
    objective: str = typer.Option("nll", "--objective", help="Expert objective: nll, or reinforce (Transformer² RL)."),
    kl_coef: float = typer.Option(0.1, "--kl-coef", min=0.0, help="KL penalty λ of the reinforce objective."),
    dispatch_head: bool = typer.Option(True, "--dispatch-head/--no-dispatch-head",
                                       help="After an expert lands in BASE/experts: retrain the dispatch head over "
                                       "all of them and measure routing (BASE/dispatch_log.json)."),
    visual_task: bool = typer.Option(False, "--visual-task", help="MVoT: train (or fine-tune --base) on the text "
                                     "data mixed with FrozenLake episodes interleaving text and grid images; also "
                                     "trains the VQ image tokenizer (OUT/vq.safetensors)."),
    mvot_lambda: float = typer.Option(1.0, "--mvot-lambda", min=0.0, help="λ of the token discrepancy loss L_D "
                                      "(0: cross-entropy only)."),
    visual_fraction: float = typer.Option(0.5, "--visual-fraction", min=0.0, max=1.0,
                                          help="Share of each batch that is visual-task windows."),
    visual_mode: str = typer.Option("mixed", "--visual-mode", help="Episodes: mixed, interleaved or text (no images)."),
    visual_maps: int = typer.Option(2000, "--visual-maps", min=1, help="Training maps of the visual task."),
    eval_episodes: int = typer.Option(24, "--eval-episodes", min=0,
                                      help="Held-out visual episodes measured at the end (0: none)."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Train as N ranks on this host (torchrun): one GPU each "
                              "with --device cuda, else gloo on the CPU; --batch-size is per rank."),
    strategy: str = typer.Option("auto", "--strategy", help="With several ranks: ddp (replicate), fsdp (FSDP2 "
                                 "fully_shard) or auto (fsdp for the base preset, else ddp)."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
):
    """Train a model (AdamW, cosine schedule, clipping, chained segments, resumable) and save a checkpoint."""
    check_torch_device(device)
    if expert is not None:  # a Transformer² expert instead (options left at default take the expert defaults)
        from neat_edge.tools.experts_cmd import train_expert_cli

        return train_expert_cli(ctx, expert, domain, base, [*data, *(more_data or [])], out, objective, kl_coef,
                                dispatch_head, steps=steps, batch_size=batch_size, segments=segments, lr=lr,
                                warmup=warmup, seed=seed, device=device, eval_bytes=eval_bytes)
    if base is not None and preset_name is not None and not visual_task:  # (an expert returned above)
        raise NeatError("--base: the model is the checkpoint's; --preset does not apply "
                        "(--config may change its memory step)")
    cfg = NeatConfig.load(config) if config else preset(preset_name or "tiny")
    if precision not in PRECISIONS:
        raise NeatError(f"unknown --precision '{precision}' (choose from {', '.join(PRECISIONS)})")
    resolve_mode(step_mode, device)  # one error line for an unknown mode, or CUDA graphs on the CPU
    if recall_fraction and (visual_task or entropy_model):
        raise NeatError("--recall-fraction applies to text training (not --visual-task or --entropy-model)")
    from neat_edge.training.recall_episodes import parse_distances

    opts = TrainOptions(steps=steps, batch_size=batch_size, segments=segments, tbptt=tbptt, lr=lr, seed=seed,
                        recall_fraction=recall_fraction, recall_distances=parse_distances(recall_distances),
                        warmup=warmup, device=device, precision=precision, grad_checkpointing=grad_checkpointing,
                        eval_every=eval_every, eval_bytes=eval_bytes, save_every=save_every, max_minutes=max_minutes,
                        step_mode=step_mode, memory_budget=memory_budget,
                        entropy_checkpoint=str(entropy_checkpoint) if entropy_checkpoint else None)
    paths = [*data, *(more_data or [])]
    ranks = None
    if nproc > 1 or "WORLD_SIZE" in os.environ:  # several ranks (training/distributed.py)
        from neat_edge.training.data import collect_files
        from neat_edge.training.distributed import STRATEGIES, Ranks, launch

        if visual_task or entropy_model:
            raise NeatError("several ranks (--nproc / torchrun) train the byte model on text only "
                            "(not --visual-task or --entropy-model)")
        if strategy not in STRATEGIES:
            raise NeatError(f"unknown --strategy '{strategy}' (choose from {', '.join(STRATEGIES)})")
        if "WORLD_SIZE" not in os.environ:  # the launcher: check what is cheap to check, then start the ranks
            collect_files(paths)
            import torch

            if device.startswith("cuda") and torch.cuda.device_count() < nproc:
                raise NeatError(f"--nproc {nproc} --device cuda needs {nproc} GPUs; {torch.cuda.device_count()} visible")
            code = launch(nproc, sys.argv[1:])
            if code:
                raise NeatError(f"{nproc}-rank training failed (exit status {code}); the ranks' output is above")
            return
        ranks = Ranks.from_env(device, strategy, preset_name or "")
        opts.device = ranks.device(device)
    if visual_task:
        from neat_edge.training.mvot import VisualOptions, train_visual

        vopts = VisualOptions(lam=mvot_lambda, fraction=visual_fraction, mode=visual_mode, maps=visual_maps,
                              eval_episodes=eval_episodes)
        if resume:
            raise NeatError("--resume is not supported with --visual-task")
        result = train_visual(cfg, paths, out, opts, vopts, base=base)
        held = result["mvot"]["heldout"] or {}
        console.print("MVoT held-out: " + "  ".join(f"{k}={v:.4f}" for k, v in held.items() if isinstance(v, float)))
    elif entropy_model:
        from neat_edge.model.entropy import EntropyConfig
        from neat_edge.training.train import train_entropy

        result = train_entropy(EntropyConfig(segment_len=cfg.segment_len), paths, out, opts, resume=resume)
    else:
        result = train(cfg if config or base is None else None, paths, out, opts, resume=resume, base=base,
                       ranks=ranks, show_progress=ranks is None or ranks.is_main)
        if ranks is not None:
            ranks.close()
            if not ranks.is_main:
                return
    stopped = f"  stopped at step {result['steps_done']} (--resume goes on)" if result["stopped_early"] else ""
    console.print(f"[green]saved[/green] {out}  params={result['parameters']:,}  "
                  f"held-out bits/byte={result['heldout_bits_per_byte']:.4f}  "
                  f"({result['train_seconds']:.0f}s, {result['bytes_per_second']:.0f} bytes/s){stopped}")
