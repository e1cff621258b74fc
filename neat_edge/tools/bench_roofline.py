"""The Titans memory layer against its roofline floor: FLOPs and bytes counted analytically for one
NeuralMemory.forward (project, gates, read-then-write in chunks of the closed form, merge), the floor
time max(FLOPs / peak FLOP/s, bytes / bandwidth), and the measured time (CUDA events, warm-up excluded,
eager and torch.compile).

GEMM FLOPs (2·m·n·k per product; `gemm_flops` equals torch.utils.flop_counter's count, tested):
  projections   k, v, q, out: 4 · 2·B·N·D²;  gates (α, θ, η): 3 · 2·B·N·D·H
  per chunk of T tokens (Eq 15-18), per layer l with widths (i_l, o_l), H heads:
    forward over [k; q] (2T rows)       2·B·H·2T·i_l·o_l
    Σ c_k δ_k a_kᵀ and Σ d_k δ_k a_kᵀ   2 · 2·B·H·T·i_l·o_l
    δ_{l-1} = δ_l W_l (l > 0)           2·B·H·T·i_l·o_l
Elementwise FLOPs (estimate): the T×T decay matrix (≈ 8 ops per entry: sub, add, where, exp, sum, ...),
the state update (M: 4, S: 3 ops per element per layer), activations and norms (≈ 10 per feature).
Bytes (the floor: every tensor crosses HBM once, fp32): x in, y out, the projection and gate weights,
the memory weights and momentum read once and written once.
"""

from __future__ import annotations

import time

H100 = {"name": "NVIDIA H100 SXM (dense)", "bf16_flops": 989e12, "fp32_flops": 67e12, "hbm_bytes_per_s": 3.35e12}
FP32 = 4


def memory_widths(head_dim: int, depth: int, expansion: int) -> list[tuple[int, int]]:
    """(d_in, d_out) of every memory MLP layer (NeuralMemory.shapes, transposed)."""
    widths = [head_dim] + [head_dim * expansion] * (depth - 1) + [head_dim]
    return [(widths[i], widths[i + 1]) for i in range(depth)]


def memory_layer_cost(dim: int, heads: int, depth: int, expansion: int, tokens: int, chunk: int,
                      n_chunks: int = 1, batch: int = 1) -> dict:
    """FLOPs and bytes of NeuralMemory(dim, heads, depth, chunk, expansion).forward on [batch, tokens, dim]
    written in `n_chunks` chunks (scan: n_chunks == 1 is one chunk of all tokens)."""
    b, n, d, h = batch, tokens, dim, heads
    t = chunk if n_chunks > 1 else n  # tokens per chunk (the tail chunk is padded to `chunk`)
    layers = memory_widths(d // h, depth, expansion)
    projections = 4 * 2 * b * n * d * d + 3 * 2 * b * n * d * h
    per_chunk = 0
    for layer, (i, o) in enumerate(layers):
        per_chunk += 2 * b * h * 2 * t * i * o  # forward over keys and queries
        per_chunk += 2 * 2 * b * h * t * i * o  # the two gradient GEMMs of Eq 16-18
        if layer > 0:
            per_chunk += 2 * b * h * t * i * o  # backprop δ through W_l
    gemm = projections + n_chunks * per_chunk
    state = sum(2 * b * h * i * o for i, o in layers)  # weights + momentum elements
    elementwise = n_chunks * (8 * b * h * t * t + 7 * state // 2) + 10 * b * n * (4 * d + sum(o for _, o in layers) * h)
    weights = 4 * d * d + 3 * (d * h + h)
    moved = FP32 * (2 * b * n * d + weights + 2 * state)
    return {"gemm_flops": gemm, "elementwise_flops": elementwise, "flops": gemm + elementwise, "bytes": moved,
            "arithmetic_intensity": (gemm + elementwise) / moved, "tokens_per_chunk": t, "n_chunks": n_chunks}


def roofline_floor_s(cost: dict, peak: dict = H100, dtype: str = "fp32") -> dict:
    compute = cost["flops"] / peak[f"{dtype}_flops"]
    memory = cost["bytes"] / peak["hbm_bytes_per_s"]
    return {"floor_s": max(compute, memory), "compute_s": compute, "memory_s": memory,
            "bound": "compute" if compute >= memory else "memory"}


def time_memory_layer(memory, batch: int, tokens: int, n_chunks: int, runs: int = 20, warmup: int = 5,
                      device: str = "cuda", compile_mode: str | None = None) -> dict:
    """Median ms of NeuralMemory read-then-write (forward's math, with `n_chunks` writes) on random input
    (CUDA events on a GPU, perf_counter on a CPU)."""
    import torch

    memory = memory.to(device).eval()
    x = torch.randn(batch, tokens, memory.dim, device=device)
    state = memory.init_state(batch)

    def step(x, state):
        k, v, q, _ = memory.project_stream(x, state["conv"][0])
        alpha, theta, eta = memory.gates(x)
        new, read = memory.scan(state, k, v, alpha, theta, eta, q, None, n_chunks)
        return memory.merge(read), new

    fn = torch.compile(step, mode=compile_mode) if compile_mode else step
    times = []
    with torch.no_grad():
        for i in range(warmup + runs):
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(x, state)
                end.record()
                torch.cuda.synchronize()
                ms = start.elapsed_time(end)
            else:
                t0 = time.perf_counter()
                fn(x, state)
                ms = (time.perf_counter() - t0) * 1e3
            if i >= warmup:
                times.append(ms)
    times.sort()
    return {"median_ms": times[len(times) // 2], "min_ms": times[0]}


def memory_roofline(cfg, batch: int, device: str = "cuda", runs: int = 20, warmup: int = 5,
                    compile_modes=(None,), peak: dict = H100) -> dict:
    """The model's first latent memory layer (cfg's sizes), one segment of patches: count, floor, times."""
    from neat_edge.model.latent import LatentTransformer

    memory = LatentTransformer(cfg).layers[0].memory
    tokens = cfg.max_patches_per_segment
    cost = memory_layer_cost(cfg.d_model, cfg.memory_heads, cfg.memory_depth, cfg.memory_expansion, tokens,
                             memory.chunk_size, cfg.memory_chunks, batch)
    floor = roofline_floor_s(cost, peak)
    rows = {}
    for mode in compile_modes:
        try:
            measured = time_memory_layer(memory, batch, tokens, cfg.memory_chunks, runs, warmup, device, mode)
        except Exception as exc:  # a compiler failure is a result of this row, not the end of the others
            if mode is None:
                raise
            rows[mode] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            continue
        seconds = measured["median_ms"] / 1e3
        rows[mode or "eager"] = {**measured, "achieved_tflops": cost["flops"] / seconds / 1e12,
                                 "achieved_gb_per_s": cost["bytes"] / seconds / 1e9,
                                 "x_over_floor": seconds / floor["floor_s"]}
    return {"batch": batch, "tokens": tokens, "dim": cfg.d_model, "heads": cfg.memory_heads, "depth": cfg.memory_depth,
            "expansion": cfg.memory_expansion, "cost": cost, "floor": floor, "peak": peak, "measured": rows}
