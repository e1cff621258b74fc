"""The memory alone as an associative store: write N (key, value) pairs whose keys are as correlated as
a real segment's, read them back. Shared by tests/test_memory_recall.py and the sweep behind the
README's table (`PYTHONPATH=. python -m tests.memory_associations`).

Keys: one shared direction plus noise, ℓ2-normalised, with a chosen mean pairwise cosine (the shipped
tiny's memory keys within a 128-byte segment: 0.70 on average, 0.36-0.96 per segment). Values: N(0, 1).
Error: Σ‖M(k_i) − v_i‖² / Σ‖M_0(k_i) − v_i‖² (1 = nothing stored, 0 = all recalled), after `writes`
passes over the pairs, each pass one chunk (a segment's write), no momentum, α = 0.002 as in the model.
Identification: the share of keys whose read M(k_i) is closer (cosine) to v_i than to every other v_j,
i.e. what a reader that only has to tell the stored values apart gets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neat_edge.model.titans import NeuralMemory


def correlated_keys(n: int, d: int, cosine: float, gen: torch.Generator) -> torch.Tensor:
    """[1, 1, n, d] unit keys: c·shared + noise with c² / (c² + 1) = cosine, the expected pairwise cosine."""
    c = (cosine / (1 - cosine)) ** 0.5
    shared = torch.randn(1, 1, 1, d, generator=gen, dtype=torch.float64)
    return F.normalize(c * shared + torch.randn(1, 1, n, d, generator=gen, dtype=torch.float64), dim=-1)


def recall(n: int, cosine: float, rule: str = "delta", step: str = "sum", depth: int = 1, rate: float = 1.0,
           writes: int = 1, chunk: int | None = None, d: int = 80, seed: int = 0) -> tuple[float, float]:
    """(error, identification) after writing n pairs. rate: β for the delta rule; θ per unit of mean
    squared error for titans (θ_t = rate / d on Eq 12's summed loss). chunk: tokens per chunk (None: all n
    in one chunk, as one segment's write)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mem = NeuralMemory(d, heads=1, depth=depth, chunk_size=chunk or n, rule=rule, step=step,
                       max_grad_norm=0.0).double()
    k = correlated_keys(n, d, cosine, gen)
    v = torch.randn(1, 1, n, d, generator=gen, dtype=torch.float64)
    theta = torch.full((1, 1, n), rate / 2 if rule == "delta" else rate / d, dtype=torch.float64)
    alpha, eta = torch.full_like(theta, 0.002), torch.zeros_like(theta)
    with torch.no_grad():
        state = mem.init_state(1)
        before = (mem.retrieve(state, k) - v).pow(2).sum()
        for _ in range(writes):
            state = mem.update(state, k, v, alpha, theta, eta)
        read = mem.retrieve(state, k)
        err = ((read - v).pow(2).sum() / before).item()
        cos = F.normalize(read[0, 0], dim=-1) @ F.normalize(v[0, 0], dim=-1).T
        ident = (cos.argmax(-1) == torch.arange(n)).double().mean().item()
    return (err, ident) if err == err else (float("inf"), ident)  # NaN (a diverged write): infinitely bad


def recall_error(*args, **kwargs) -> float:
    return recall(*args, **kwargs)[0]


def survival(later_writes: int, later_beta: float, d: int = 80, seed: int = 0) -> float:
    """Error of one association written with β = 1 (random keys, delta rule) after `later_writes` more
    writes of random pairs at β = later_beta, one per token as a stream of patches would write them."""
    gen = torch.Generator().manual_seed(seed)
    n = later_writes + 1
    mem = NeuralMemory(d, heads=1, depth=1, chunk_size=64, rule="delta").double()
    k = correlated_keys(n, d, 0.0, gen)
    v = torch.randn(1, 1, n, d, generator=gen, dtype=torch.float64)
    beta = torch.full((1, 1, n), later_beta, dtype=torch.float64)
    beta[..., 0] = 1.0
    zeros = torch.zeros_like(beta)
    with torch.no_grad():
        state = mem.update({"weights": [torch.zeros(1, 1, d, d, dtype=torch.float64)], "momentum": [zeros]},
                           k, v, zeros, beta / 2, zeros)
        return ((mem.retrieve(state, k[:, :, :1]) - v[:, :, :1]).pow(2).sum() / v[:, :, :1].pow(2).sum()).item()


TITANS_RATES = (0.25, 1.0, 4.0, 16.0, 64.0, 256.0)


def best_titans(n: int, cosine: float, step: str, depth: int, writes: int = 1, chunk: int | None = None):
    """(lowest error, its θ per unit of MSE) over TITANS_RATES: each remedy at its own best step."""
    return min((recall_error(n, cosine, "titans", step, depth, rate, writes, chunk), rate) for rate in TITANS_RATES)


def sweep(ns=(8, 40, 80), cosines=(0.0, 0.5, 0.7)) -> list[str]:
    """The README's table: error / identification after one pass, per rule and step, N and key cosine
    (titans: each step at its best θ per unit of MSE, in brackets)."""
    arms = [("delta, β = 1", ("delta", "sum", 1, 1.0)), ("delta, β = 0.5", ("delta", "sum", 1, 0.5))]
    arms += [(f"titans depth {depth}, {step}", ("titans", step, depth, None)) for depth in (2, 1)
             for step in ("sum", "mean", "huber", "newton_schulz") if depth == 2 or step in ("sum", "newton_schulz")]
    cols = [(c, n) for c in cosines for n in ns]
    lines = ["| rule, step | " + " | ".join(f"cos {c}, N {n}" for c, n in cols) + " |", "| --- " * (len(cols) + 1) + "|"]
    for name, (rule, step, depth, rate) in arms:
        cells = []
        for c, n in cols:
            best = rate if rate is not None else best_titans(n, c, step, depth)[1]
            err, ident = recall(n, c, rule, step, depth, best)
            cells.append(f"{err:.2f} / {ident:.2f}" + ("" if rate is not None else f" ({best:g})"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    print("\n".join(sweep()))
