"""A long stream through ONNX Runtime with the state carried: CPython's standard library sources (real,
varied text), 2,000 segments in CI and 100,000 (12.8 MB) in the slow suite. No log-prob may be NaN or
infinite, the Titans memory's weights stay bounded, and the process's memory stays flat.

Figures (printed; README "Reliability"): segments, bytes, the largest memory-weight norm, RSS after the
warm-up and at the end, time.
"""

import os
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

from neat_edge.runtimes import open_session

CHUNK_SEGMENTS = 64  # one score() call: 64 segments (8 KiB), then the checks
NORM_GROWTH_LIMIT = 4.0  # the memory's largest weight norm may not exceed 4x the learned M_0's
RSS_GROWTH_LIMIT_MB = 64.0  # after the warm-up (first 10 %), the process may not grow by more


def stdlib_text(n_bytes: int) -> bytes:
    """The first n_bytes of the standard library's .py files, in a fixed (sorted) order."""
    parts, size = [], 0
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        data = f.read_bytes()
        parts.append(data)
        size += len(data)
        if size >= n_bytes:
            break
    data = b"".join(parts)[:n_bytes]
    assert len(data) == n_bytes, "not enough standard-library source here for the soak"
    return data


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_norm(state: dict) -> float:
    """The largest Frobenius norm among the Titans memory's weight tensors (all layers)."""
    return max(float(np.linalg.norm(v)) for k, v in state.items() if k.startswith("memory.") and ".weight." in k)


def soak(bundle_dir, segments: int) -> dict:
    session = open_session(bundle_dir)
    seg = session.config.segment_len
    data = stdlib_text(segments * seg)
    start, warm_rss, max_norm, nats = time.perf_counter(), None, 0.0, 0.0
    initial_norm = memory_norm(session.state)  # the learned M_0
    for at in range(0, len(data), CHUNK_SEGMENTS * seg):
        logp = session.score(data[at : at + CHUNK_SEGMENTS * seg])
        assert np.isfinite(logp).all(), f"non-finite log-prob near byte {at}"
        nats -= float(logp.sum(dtype=np.float64))
        assert all(np.isfinite(v).all() for v in session.state.values()), f"non-finite state after byte {at}"
        max_norm = max(max_norm, memory_norm(session.state))
        if warm_rss is None and at >= len(data) // 10:
            warm_rss = rss_mb()
    report = {"segments": segments, "bytes": len(data), "initial_memory_norm": initial_norm,
              "max_memory_norm": max_norm,  # the largest seen after any chunk of the stream
              "rss_after_warmup_mb": warm_rss, "rss_end_mb": rss_mb(), "seconds": time.perf_counter() - start,
              "bits_per_byte": nats / np.log(2) / len(data)}
    print(f"\nsoak: {report}")
    return report


def check(report: dict) -> None:
    assert report["max_memory_norm"] <= NORM_GROWTH_LIMIT * report["initial_memory_norm"], report
    assert report["rss_end_mb"] - report["rss_after_warmup_mb"] <= RSS_GROWTH_LIMIT_MB, report


def test_soak_2000_segments(bundle_dir):
    check(soak(bundle_dir, 2_000))


@pytest.mark.slow
def test_soak_100000_segments(bundle_dir):
    check(soak(bundle_dir, 100_000))
