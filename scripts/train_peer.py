"""Train the same-size peer (neat_edge/hf/peer.py: the byte-level Llama of `neat-bench train --peer`) with
the project's own loop, train.fit — same sampler, schedule, clipping, bf16, fused AdamW, torch.compile — for
the same GPU time as a NEAT run, then score held-out documents the way `neat eval` picks them.

    python scripts/train_peer.py --like neat_edge/checkpoints/tiny --data data/std data/pydoc data/licenses \
        --device cuda --batch-size 256 --segments 8 --max-minutes 10 --steps 100000 --out runs/peer
    python scripts/train_peer.py --out runs/peer --eval-only --eval data/pydoc data/std --json peer_eval.json

--segments × the NEAT model's segment_len is the peer's context (the NEAT window); --resume continues a run.
Each held-out document is scored from a fresh start with windows sliding by half the context.
"""

from __future__ import annotations

import argparse
import json

from neat_edge.evaluation import read_documents
from neat_edge.hf.peer import PeerByteModel, PeerConfig, load_peer, save_peer
from neat_edge.model.checkpoint import load
from neat_edge.model.neat import count_parameters
from neat_edge.training.data import ByteCorpus, split_files
from neat_edge.training.train import TrainOptions, fit


def evaluate(model: PeerByteModel, folders, max_bytes: int, device: str) -> dict:
    """Per folder: bits/byte of the first max_bytes of its held-out documents (sorted, as `neat eval` reads them)."""
    model.to(device).eval()
    out = {}
    for folder in folders:
        docs = read_documents(split_files([folder], "heldout"), max_bytes)
        bits = sum(model.document_bits(b"".join(d.chunks()), device=device) for d in docs)
        total = sum(d.size for d in docs)
        out[str(folder)] = {"bits_per_byte": bits / total, "bytes": total, "documents": len(docs)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--like", default="default", help="the NEAT model (checkpoint or preset) whose size the peer matches")
    ap.add_argument("--data", nargs="*", default=[])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--segments", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--max-minutes", type=float, default=0.0)
    ap.add_argument("--step-mode", default="compile")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--eval", nargs="*", default=[], help="folders whose held-out documents are scored")
    ap.add_argument("--eval-max-bytes", type=int, default=131072)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    report = {}
    if args.eval_only:
        model = load_peer(args.out)
    else:
        neat = load(args.like)
        cfg = PeerConfig(count_parameters(neat), args.segments * neat.cfg.segment_len, args.seed)
        model = load_peer(args.out) if args.resume else PeerByteModel(cfg)
        opts = TrainOptions(steps=args.steps, batch_size=args.batch_size, segments=1, tbptt=1, lr=args.lr,
                            warmup=args.warmup, seed=args.seed, device=args.device, max_minutes=args.max_minutes,
                            step_mode=args.step_mode if args.device.startswith("cuda") else "eager")
        result = fit(model, ByteCorpus.from_paths(args.data), opts, args.out, save_peer, resume=args.resume)
        report["train"] = {k: result[k] for k in ("parameters", "steps_done", "train_seconds", "bytes_per_second",
                                                  "heldout_bits_per_byte", "step_mode", "compile_seconds")}
        report["train"]["shape"] = model.llama.peer_shape
    if args.eval:
        report["heldout"] = evaluate(model, args.eval, args.eval_max_bytes, args.device)
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
