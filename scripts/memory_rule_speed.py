"""Training speed of one memory layer write, delta vs titans: forward + backward of NeuralMemory.scan
over one segment's patches in one chunk (the read at the chunk start, then the write), on this CPU.

    PYTHONPATH=. python scripts/memory_rule_speed.py [--threads 1] [--repeats 30]
"""

from __future__ import annotations

import argparse
import time

import torch

from neat_edge.model.titans import NeuralMemory

SIZES = {"tiny": (160, 2, 32), "small": (384, 4, 64)}  # d_model, memory heads, patches per segment
ARMS = (("titans, depth 2", "titans", "sum", 2), ("titans, depth 1", "titans", "sum", 1),
        ("delta, depth 1", "delta", "sum", 1), ("titans, depth 2, newton_schulz", "titans", "newton_schulz", 2))


def time_write(dim, heads, patches, batch, rule, step, depth, repeats):
    torch.manual_seed(0)
    mem = NeuralMemory(dim, heads=heads, depth=depth, chunk_size=patches, rule=rule, step=step)
    x = torch.randn(batch, patches, dim)

    def once():
        state = mem.init_state(batch)
        k, v, q, _ = mem.project_stream(x, state["conv"][0])
        alpha, theta, eta = mem.gates(x)
        state, read = mem.scan(state, k, v, alpha, theta, eta, q, None, 1)
        (read.square().mean() + state["weights"][-1].square().mean()).backward()

    for _ in range(3):
        once()
    start = time.perf_counter()
    for _ in range(repeats):
        once()
    return (time.perf_counter() - start) / repeats * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| size | batch | " + " | ".join(f"{arm[0]} ms" for arm in ARMS) + " | delta / titans depth 2, depth 1 |")
    print("| --- " * (len(ARMS) + 3) + "|")
    for size, (dim, heads, patches) in SIZES.items():
        ms = [time_write(dim, heads, patches, args.batch, *arm[1:], args.repeats) for arm in ARMS]
        cells = " | ".join(f"{m:.2f}" for m in ms)
        print(f"| {size} | {args.batch} | {cells} | {ms[2] / ms[0]:.2f}x, {ms[2] / ms[1]:.2f}x |")


if __name__ == "__main__":
    main()
