"""The fast training step against the reference on a GPU: the compiled window (inductor, and CUDA graphs)
must give the eager step's loss and gradients to bf16 tolerance, on the same weights and windows.

    python scripts/gpu_train_check.py --preset tiny --batch-size 32 --json OUT.json

Prints, per mode, the loss difference and the largest relative gradient difference (‖g − g_ref‖ / ‖g_ref‖
per parameter, and over all parameters) against eager, and fails (exit 1) above --tolerance.
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from neat_edge.config import preset
from neat_edge.model.checkpoint import build
from neat_edge.training.data import ByteCorpus
from neat_edge.training.step import sample_batch
from neat_edge.training.train import TrainOptions, build_train_step


def grads_of(model, opts, x):
    _, _, _, step = build_train_step(model, opts)
    loss, _ = step.forward_backward(x)
    return float(loss), {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--segments", type=int, default=8)
    ap.add_argument("--tbptt", type=int, default=4)
    ap.add_argument("--modes", default="compile,graphs")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--data", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import sysconfig

    corpus = ByteCorpus.from_paths([args.data or sysconfig.get_paths()["stdlib"]])
    torch.manual_seed(0)
    base = build(preset(args.preset))
    import numpy as np

    window = args.segments * base.cfg.segment_len
    x = sample_batch(corpus, np.random.default_rng(0), args.batch_size, window, "cuda")
    results = {}
    ref_opts = TrainOptions(batch_size=args.batch_size, segments=args.segments, tbptt=args.tbptt, device="cuda",
                            step_mode="eager")
    ref_loss, ref = grads_of(copy.deepcopy(base).cuda().train(), ref_opts, x)
    # fp32 eager on the same windows: how far bf16 itself moves the gradients (the tolerance's yardstick)
    fp32_loss, fp32 = grads_of(copy.deepcopy(base).cuda().train(),
                               TrainOptions(**{**vars(ref_opts), "precision": "fp32"}), x)
    for mode in ["fp32-eager", *args.modes.split(",")]:
        if mode == "fp32-eager":
            loss, grads = fp32_loss, fp32
        else:
            torch._dynamo.reset()
            loss, grads = grads_of(copy.deepcopy(base).cuda().train(), TrainOptions(**{**vars(ref_opts),
                                                                                      "step_mode": mode}), x)
        per = {n: float((grads[n] - ref[n]).norm() / ref[n].norm().clamp(min=1e-12)) for n in ref}
        total = float(torch.cat([(grads[n] - ref[n]).flatten() for n in ref]).norm()
                      / torch.cat([ref[n].flatten() for n in ref]).norm())
        worst = max(per, key=per.get)
        results[mode] = {"loss": loss, "loss_ref": ref_loss, "loss_rel_diff": abs(loss - ref_loss) / abs(ref_loss),
                         "grad_rel_diff_total": total, "grad_rel_diff_worst": per[worst], "worst_param": worst}
        print(mode, json.dumps(results[mode]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    bad = [m for m, r in results.items() if m != "fp32-eager" and (r["loss_rel_diff"] > args.tolerance / 10
                                                                   or r["grad_rel_diff_total"] > args.tolerance)]
    if bad:
        raise SystemExit(f"fast step differs from the reference beyond tolerance: {bad}")


if __name__ == "__main__":
    main()
