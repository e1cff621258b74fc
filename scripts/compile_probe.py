"""Where torch.compile's time goes on the NEAT step: compile at a full segment, then partial segments (what
generation feeds), then steady-state scoring and generation. Each line says how long that call took.

    python scripts/compile_probe.py MODE DYNAMIC [PRESET DEVICE]
      MODE      default | reduce-overhead (CUDA graphs) | eager (dynamo only: a quick check without a GPU)
      DYNAMIC   none (automatic dynamic shapes, what neat-bench uses) | true (every axis symbolic)
      PRESET    small (default) | tiny ...;  DEVICE cuda (default) | cpu

Seeded weights: the timings are the point, not the predictions.
"""

import sys
import time

import torch
from torch._dynamo.utils import counters

from neat_edge.config import PRESETS
from neat_edge.model.checkpoint import build
from neat_edge.runtimes import open_model_session


def main(mode: str, dynamic: str, preset: str = "small", device: str = "cuda") -> None:
    torch.manual_seed(0)
    model = build(PRESETS[preset]).eval()
    session = open_model_session(model)
    session.backend = type(session.backend)(model, device)
    options = {"backend": "eager"} if mode == "eager" else {"mode": mode}
    session.backend.module = torch.compile(session.backend.module, dynamic={"none": None, "true": True}[dynamic],
                                           **options)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    data, seg, start = bytes(range(32, 127)) * 200, session.config.segment_len, time.time()

    def timed(label: str, fn) -> float:
        t = time.time()
        fn()
        sync()
        dt = time.time() - t
        print(f"[{time.time() - start:7.1f}s] {label}: {dt:.3f}s", flush=True)
        return dt

    timed("first full segment", lambda: session.score(data[:seg]))
    for n in (1, 2, 3, 57, 200):  # generation's partial segments: new shapes until the axis is symbolic
        timed(f"partial segment of {n}", lambda n=n: session.score(data[seg:seg + n]))
        session.reset()
    timed("8 segments", lambda: session.score(data[:8 * seg]))
    dt = timed("32 segments", lambda: session.score(data[:32 * seg]))
    print(f"  scoring {32 * seg / dt:.0f} bytes/s", flush=True)
    timed("generate 64 bytes (warm)", lambda: session.generate(b"def f(", 64))
    dt = timed("generate 64 bytes", lambda: session.generate(b"def g(", 64))
    print(f"  generation {64 / dt:.1f} bytes/s; dynamo {dict(counters['stats'])}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
