"""One `neat-bench` measurement: a backend × precision on a bundle, measured the same way for all.

  first_call_ms       opening the session excluded; the first segment step after it (lazy
                      initialisation, torch.compile's compilation, ONNX Runtime's first run)
  step_latency_ms     p50 / p90 / p99 of one segment step of `batch` streams (warm-up excluded),
                      interleaved: round after round, one step of every case in turn;
                      on CUDA each step is bracketed by torch.cuda.synchronize and also timed with
                      CUDA events (step_latency_ms_cuda_events)
  score_bytes_per_s   Session.score over the corpus (one stream, state carried)
  generate_bytes_per_s  Session.generate of `generate_bytes` bytes after a short prompt (greedy),
                      after one untimed generation of the same length (compiled / recorded shapes warm)
  peak_memory_mb      growth of the process's resident memory (sampled every 2 ms) from before the
                      session opened to after its first step; on CUDA the allocator's peak
  bits_per_byte       of the corpus, through the same session
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np

from neat_edge.errors import NeatError

TORCH_VARIANTS = {"compile": "default", "cudagraphs": "reduce-overhead"}  # torch[:cuda]:VARIANT -> torch.compile mode


def parse_bench_backend(name: str) -> tuple[str, str | None]:
    """'torch:cuda:compile' -> ('torch:cuda', 'default'); other names pass through (mode None)."""
    base, _, last = name.rpartition(":")
    if base and last in TORCH_VARIANTS:
        if not base.startswith("torch"):
            raise NeatError(f"backend '{name}': {last} applies to the torch backends only")
        return base, TORCH_VARIANTS[last]
    return name, None


class PeakRSS:
    """Peak resident set size while active, sampled every 2 ms (Linux /proc; else ru_maxrss)."""

    def __init__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / 1e6


def _cuda(session) -> bool:
    module = getattr(session.backend, "module", None)
    if module is None:
        return False
    return next(module.parameters()).device.type == "cuda"


def batch_feeds(session, segment: bytes, batch: int) -> dict[str, np.ndarray]:
    """The exact feeds of one step on `segment`, repeated for `batch` streams along the batch axis."""
    from neat_edge.calibration.reader import RecordingBackend

    inner, sink = session.backend, []
    session.backend = RecordingBackend(inner, sink)
    try:
        session.run_segment(segment)
    finally:
        session.backend = inner
    feeds = sink[0]
    batched = {}
    for t in session.backend.spec.inputs:
        value = feeds[t.name]
        batched[t.name] = np.repeat(value, batch, axis=0) if t.dynamic_axes.get(0) == "batch" else value
    return batched


class StepTimer:
    """Times one step of a case: wall-clock ms (bracketed by torch.cuda.synchronize on CUDA) and, on
    CUDA, the device time between two CUDA events."""

    def __init__(self, session, feeds, cuda: bool):
        self.session, self.feeds, self.cuda = session, feeds, cuda
        self.wall: list[float] = []
        self.device: list[float] = []

    def __call__(self, keep: bool = True) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        self.session.backend.step(self.feeds)
        if self.cuda:
            end.record()
            torch.cuda.synchronize()
        if keep:
            self.wall.append((time.perf_counter() - t0) * 1e3)
            if self.cuda:
                self.device.append(start.elapsed_time(end))


def time_interleaved(timers: list[StepTimer], runs: int, warmup: int) -> None:
    """Warm-up (not kept), then `runs` rounds of one step of every case in turn: on a shared machine a
    burst of load hits every case alike instead of one of them."""
    for _ in range(warmup):
        for timer in timers:
            timer(keep=False)
    for _ in range(runs):
        for timer in timers:
            timer()


def _percentiles(times: list[float]) -> dict:
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99)}


def _size_mb(bundle, kind: str) -> float:
    if kind == "torch":
        return (bundle.checkpoint_dir / "model.safetensors").stat().st_size / 1e6
    from neat_edge.runtimes.select import ARTIFACT

    path = bundle.path / bundle.manifest["graphs"][ARTIFACT[kind]]["file"]
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(f.stat().st_size for f in files) / 1e6


def open_bench_session(bundle_dir: Path, backend: str, threads: int | None):
    """A Session for a bench backend name (torch:compile etc. wrap the module in torch.compile)."""
    from neat_edge.runtimes import open_session

    name, compile_mode = parse_bench_backend(backend)
    session = open_session(bundle_dir, backend=name)
    if threads and name.startswith("onnxruntime"):  # the same thread count for every backend
        from neat_edge.bundle import open_bundle
        from neat_edge.runtimes.onnxruntime import OnnxRuntimeBackend

        path, spec = open_bundle(bundle_dir, verify_checksums=False).graph("onnx")
        session.backend = OnnxRuntimeBackend(path, spec, name.partition(":")[2] or "cpu", threads=threads)
    if compile_mode is not None:
        import torch

        # Automatic dynamic shapes (dynamic=None): static at the first shape, then recompiled once with the
        # segment axis symbolic when generation's partial segments arrive (4 graphs in all, ~210 s for small
        # on the H100). dynamic=True makes every axis symbolic and did not finish compiling in 285 s.
        session.backend.module = torch.compile(session.backend.module, mode=compile_mode)
    return session


class BenchCase:
    """One backend × precision: opened, first call timed; steps timed by time_interleaved; the rest
    (scoring, generation, bits/byte) by finish()."""

    def __init__(self, bundle_dir: Path, backend: str, precision: str, data: bytes, batch: int = 1,
                 threads: int | None = None, segment_len: int | None = None):
        from neat_edge.bundle import open_bundle
        from neat_edge.runtimes.select import parse_backend

        self.bundle = open_bundle(bundle_dir)
        self.backend, self.precision, self.data, self.batch = backend, precision, data, batch
        self.kind, _ = parse_backend(parse_bench_backend(backend)[0])
        self.rss = PeakRSS().__enter__()
        t0 = time.perf_counter()
        self.session = open_bench_session(bundle_dir, backend, threads)
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self.cuda = _cuda(self.session)
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        self.segment = data[: segment_len or self.session.config.segment_len]
        # The first call is the step that records the feeds: the one that pays torch.compile's compilation,
        # ONNX Runtime's first-run allocations. With --batch > 1 it is the first step at that batch.
        t0 = time.perf_counter()
        feeds = batch_feeds(self.session, self.segment, batch)
        if self.cuda:
            torch.cuda.synchronize()
        self.first_ms = (time.perf_counter() - t0) * 1e3
        if batch > 1:
            first = StepTimer(self.session, feeds, self.cuda)
            first()
            self.first_ms = first.wall[0]
        self.rss.__exit__(None, None, None)  # memory to open the session and run a step (the others' later
        # steps would be counted too if the sampler kept running: the cases are open together)
        self.timer = StepTimer(self.session, feeds, self.cuda)

    def finish(self, generate_bytes: int, dispatch=None) -> dict:
        from neat_edge.export.verify import bits_per_byte

        session, data = self.session, self.data
        session.reset()
        t0 = time.perf_counter()
        logp = session.score(data)
        score_s = time.perf_counter() - t0
        prompt = data[:16]
        session.reset()
        session.generate(prompt, generate_bytes)  # warm: every segment length generation steps through
        session.reset()
        t0 = time.perf_counter()
        session.generate(prompt, generate_bytes)
        gen_s = time.perf_counter() - t0
        session.reset()
        wall = self.timer.wall
        result = {"backend": self.backend, "precision": self.precision,
                  "size_mb": round(_size_mb(self.bundle, self.kind), 3),
                  "load_ms": round(self.load_ms, 3), "first_call_ms": round(self.first_ms, 3),
                  "step_latency_ms": _percentiles(wall), "batch": self.batch, "segment_len": len(self.segment),
                  "batch_bytes_per_s": self.batch * len(self.segment) / (float(np.median(wall)) / 1e3),
                  "score_bytes_per_s": len(data) / score_s, "generate_bytes_per_s": generate_bytes / gen_s,
                  "generated_bytes": generate_bytes, "bits_per_byte": bits_per_byte(logp),
                  "corpus_bytes": len(data), "runs": len(wall), "device": "cuda" if self.cuda else "cpu"}
        if self.timer.device:
            result["step_latency_ms_cuda_events"] = _percentiles(self.timer.device)
        calibration = self.bundle.manifest.get("calibration", {}).get("graphs", {}).get("step")
        if calibration and self.kind == "onnxruntime":
            result["calibration_bits_per_byte_delta"] = calibration["accuracy"]["bits_per_byte_delta"]
        if dispatch is not None:
            result.update(dispatch(session))
        if self.cuda:
            import torch

            result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 1e6
        else:
            result["peak_memory_mb"] = round(self.rss.mb, 3)
        return result
