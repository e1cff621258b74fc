"""Copy probe (issue 28): how fast does a small NEAT model learn to copy inside its own attention, with and
without an architecture option? CPU-sized: a micro model trained by `train()` itself on synthetic lines
`<random string> | <the same string>\\n` (nothing to learn but the copy), then scored teacher-forced on
held-out lines: per-byte argmax accuracy on the repeat (after its first 2 bytes) against the first occurrence
(chance ≈ 1/62), one row per variant and seed.

    python scripts/copy_probe.py --variants previous_bytes=0 previous_bytes=1 --steps 600 --json probe.json
"""

from __future__ import annotations

import argparse
import json
import string
import tempfile
from pathlib import Path

import numpy as np

from neat_edge.config import NeatConfig
from neat_edge.model.checkpoint import load
from neat_edge.runtimes import open_model_session
from neat_edge.training.train import TrainOptions, train

ALPHABET = (string.ascii_letters + string.digits).encode()
BASE = dict(name="copy-probe", segment_len=64, patch_size=4, context_len=16, d_local=64, local_heads=2,
            encoder_layers=1, decoder_layers=1, d_model=64, latent_heads=2, latent_layers=1, memory_heads=2,
            n_experts=2, image_codebook_size=16)


def lines(rng: np.random.Generator, n: int) -> list[tuple[bytes, int]]:
    """n lines `s | s\\n` with s random over ALPHABET, 12..20 bytes; (line, offset of the repeat)."""
    out = []
    for _ in range(n):
        s = rng.choice(np.frombuffer(ALPHABET, np.uint8), int(rng.integers(12, 21))).tobytes()
        out.append((s + b" | " + s + b"\n", len(s) + 3))
    return out


def write_corpus(folder: Path, rng, n_bytes: int) -> None:
    """Training and held-out files: the corpus' held-out split is by file name (training/data.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(16):
        text = b"".join(line for line, _ in lines(rng, n_bytes // 16 // 40))
        (folder / f"part{i:02d}.txt").write_bytes(text)


def copy_accuracy(model, rng, n_lines: int = 200) -> dict:
    """Teacher-forced argmax accuracy on the first occurrence and on the repeat (from its 3rd byte)."""
    session = open_model_session(model)
    sample = lines(rng, n_lines)
    data = b"".join(line for line, _ in sample)
    _, dists = session.score_with_distributions(data)
    guess = np.asarray(dists).argmax(-1)
    truth = np.frombuffer(data, np.uint8)
    first, repeat, at = [], [], 0
    for line, off in sample:
        n = off - 3
        first += list(guess[at + 2 : at + n] == truth[at + 2 : at + n])
        repeat += list(guess[at + off + 2 : at + off + n] == truth[at + off + 2 : at + off + n])
        at += len(line)
    return {"first_accuracy": float(np.mean(first)), "repeat_accuracy": float(np.mean(repeat))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=["previous_bytes=0", "previous_bytes=1"],
                    help="config overrides, FIELD=INT[,FIELD=INT]")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the trainer's --device)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_corpus(Path(tmp) / "data", np.random.default_rng(123), 2_000_000)
        for variant in args.variants:
            extra = {k: int(v) for k, v in (kv.split("=") for kv in variant.split(","))}
            for seed in args.seeds:
                cfg = NeatConfig(**{**BASE, **extra, "seed": seed})
                opts = TrainOptions(steps=args.steps, batch_size=args.batch_size, segments=2, tbptt=2, lr=args.lr,
                                    warmup=50, seed=seed, eval_bytes=4096, device=args.device)
                out = Path(tmp) / f"run-{variant}-{seed}"
                log = train(cfg, [Path(tmp) / "data"], out, opts, show_progress=False)
                row = {"variant": variant, "seed": seed, "steps": args.steps, "parameters": log["parameters"],
                       "bytes_seen": args.steps * args.batch_size * 2 * cfg.segment_len,
                       "final_train_loss_nats": round(log["final_train_loss_nats"], 4),
                       **copy_accuracy(load(out), np.random.default_rng(7))}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
