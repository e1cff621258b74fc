"""Incremental decoding on the GPU (issue 18): one stream and many, PyTorch on CUDA, the shipped tiny.

    PYTHONPATH=. python scripts/gpu_decode_bench.py [--device cuda] [--bytes 2048] [--streams 1,16,64,256] --json OUT

Measures, on the checkpoint given (default: the shipped tiny):
  * one stream: greedy generation of --bytes after a 64-byte prompt through the decode graphs captured as
    CUDA graphs (runtimes/captured.py), after one untimed generation (the graphs recorded); bytes/s, time
    to first byte, per-byte latency p50 / p99; and the same decode graphs eager (no capture) for scale;
  * a batch of streams (Session.generate_batch): bytes/s of all streams together, for each --streams;
  * with --compile, the same with every decode graph through torch.compile before its capture (fused
    kernels), one stream and --compile-streams streams;
  * that the GPU generated the bytes the CPU generates, with log-probs within --atol of them.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from neat_edge.model.checkpoint import load
from neat_edge.runtimes import open_model_session
from neat_edge.runtimes.torch import torch_decode_graphs


def timed_stream(session, prompt: bytes, n: int) -> dict:
    for _ in range(2):  # the first run records the CUDA graphs
        session.reset()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        stamps = [time.perf_counter() for _ in session.stream(prompt, n)]
    gaps = np.diff(stamps) * 1e3
    return {"bytes": n, "bytes_per_s": n / (stamps[-1] - t0), "time_to_first_byte_ms": (stamps[0] - t0) * 1e3,
            "per_byte_latency_ms": {"p50": float(np.percentile(gaps, 50)), "p99": float(np.percentile(gaps, 99))}}


def batched(session, text: bytes, streams: str, n: int, device: str) -> list[dict]:
    rows = []
    for count in [int(s) for s in streams.split(",")]:
        prompts = [text[i * 97 : i * 97 + 64] for i in range(count)]
        session.generate_batch(prompts, 160)  # records (compiles) every graph at this batch size: a segment end too
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        session.generate_batch(prompts, n)
        seconds = time.perf_counter() - t0
        rows.append({"streams": count, "bytes_per_stream": n, "bytes_per_s": count * n / seconds, "seconds": seconds})
        print("batched", rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bytes", type=int, default=2048)
    ap.add_argument("--batch-bytes", type=int, default=512)
    ap.add_argument("--streams", default="1,16,64,256")
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--json", default=None)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-streams", default="64")
    args = ap.parse_args()
    with open(__file__, "rb") as f:
        text = f.read() * 8  # long enough for 256 prompts of 64 bytes 97 apart
    prompt = text[:64]
    report = {"device": args.device, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None}

    model = load(args.checkpoint).to(args.device)
    session = open_model_session(model)  # on CUDA: decode graphs captured as CUDA graphs
    report["captured"] = timed_stream(session, prompt, args.bytes)
    print("captured", report["captured"], flush=True)
    eager = open_model_session(model)
    eager.decode_graphs = torch_decode_graphs(model, capture=False)
    report["eager"] = timed_stream(eager, prompt, min(args.bytes, 512))
    print("eager", report["eager"], flush=True)

    reference = open_model_session(load(args.checkpoint))  # the CPU
    ref_bytes, ref_lp = reference.generate(prompt, 512, return_logprobs=True)
    session.reset()
    out, lp = session.generate(prompt, 512, return_logprobs=True)
    agree = int(np.sum(np.frombuffer(out, np.uint8) == np.frombuffer(ref_bytes, np.uint8)))
    n_same = next((i for i, (a, b) in enumerate(zip(out, ref_bytes)) if a != b), len(out))
    report["vs_cpu"] = {"bytes": 512, "same_bytes": out == ref_bytes, "agreeing_bytes": agree,
                        "max_abs_logprob_diff_on_common_prefix": float(np.abs(lp[:n_same] - ref_lp[:n_same]).max())
                        if n_same else None}
    print("vs cpu", report["vs_cpu"], flush=True)

    report["batched"] = batched(session, text, args.streams, args.batch_bytes, args.device)
    if args.json:  # what is measured so far, in case the compiled runs outlast the call
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.compile:
        compiled = open_model_session(model)
        compiled.decode_graphs = torch_decode_graphs(model, compile=True)
        t0 = time.perf_counter()
        compiled.generate(prompt, 8)
        report["compiled"] = {"compile_s": time.perf_counter() - t0, **timed_stream(compiled, prompt, args.bytes)}
        print("compiled", report["compiled"], flush=True)
        compiled.reset()
        out = compiled.generate(prompt, 512)
        report["compiled"]["same_bytes_as_cpu"] = out == ref_bytes
        report["compiled"]["batched"] = batched(compiled, text, args.compile_streams, args.batch_bytes, args.device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
