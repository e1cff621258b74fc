"""The process tests/test_crash_safety.py kills: it writes a first version of a file (or bundle), then
starts writing a second one and stops at a chosen point, says so on stdout, and waits for SIGKILL.

    python -m tests.crash_child state|checkpoint|install POINT PATH [BUNDLE]

POINT: `mid-write` (the new temporary file half written), `replace-N` (just before the N-th rename of
the second write), `exchange-before` / `exchange-after` (around the bundle swap), `none` (no stop).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def stop_here(point: str) -> None:
    print(f"AT {point}", flush=True)
    time.sleep(600)  # the parent kills us now


def stop_at(point: str) -> None:
    """Patch the writers so the second write stops at `point`."""
    import neat_edge.fileio as fileio

    if point == "mid-write":
        real = fileio._write_temp

        def half_written(path, writer):
            def writes_half(tmp):
                writer(tmp)
                data = tmp.read_bytes()
                tmp.write_bytes(data[: len(data) // 2])
                stop_here(point)
            return real(path, writes_half)

        fileio._write_temp = half_written
    elif point.startswith("replace-"):
        real_replace, calls, n = os.replace, [0], int(point.split("-")[1])

        def replace(a, b):
            calls[0] += 1
            if calls[0] == n:
                stop_here(point)
            return real_replace(a, b)

        os.replace = replace
    elif point.startswith("exchange-"):
        import neat_edge.export.bundle as writer

        real_exchange = writer.exchange_paths

        def exchange(a, b):
            if point == "exchange-before":
                stop_here(point)
            done = real_exchange(a, b)
            if point == "exchange-after":
                stop_here(point)
            return done

        writer.exchange_paths = exchange


def state(point: str, path: Path, bundle: Path) -> None:
    from neat_edge.runtimes import open_session
    from tests.test_crash_safety import STREAM_A, STREAM_B

    session = open_session(bundle)
    session.score(STREAM_A)
    session.save_state(path)
    print("V1", flush=True)
    session.score(STREAM_B)
    stop_at(point)
    session.save_state(path)


def checkpoint(point: str, path: Path) -> None:
    import numpy as np
    import torch

    from neat_edge.fileio import commit_together
    from neat_edge.model.checkpoint import build, save_checkpoint
    from neat_edge.training.resume import save_trainer_state
    from tests.test_crash_safety import MICRO

    model = build(MICRO)
    optim = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda step: 1.0)
    rng = np.random.default_rng(0)
    for version in (1, 2):  # as train.py saves: weights and trainer state in one commit
        if version == 2:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01)
            stop_at(point)
        with commit_together(path):
            save_checkpoint(model, path)
            save_trainer_state(path, model, optim, sched, rng, {"step": version})
        print(f"V{version}", flush=True)


def install(point: str, path: Path, staged: Path) -> None:
    from neat_edge.export.bundle import install_bundle

    stop_at(point)
    install_bundle(staged, path)
    print("INSTALLED", flush=True)


if __name__ == "__main__":
    kind, point, target = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    extra = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    {"state": lambda: state(point, target, extra), "checkpoint": lambda: checkpoint(point, target),
     "install": lambda: install(point, target, extra)}[kind]()
    print("DONE", flush=True)
