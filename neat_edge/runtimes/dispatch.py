"""Transformer² dispatch, outside the graph and backend-agnostic: which expert mixture a prompt gets.

Two-pass flow (Transformer² §3.2): pass 1 runs the step graph over (at most `max_bytes` of) the prompt
with the base z = 1, from a *snapshot* of the stream, so the Titans memory and every other piece of
state are left exactly as they were; a strategy turns what it sees into mixing weights α; the session
then sets z' = Σ_k α_k z_k and pass 2 (score / generate) runs with it. Strategies:

  classifier       the model's dispatch head: dispatch_logits averaged over the pass-1 segments,
                   α = softmax over the heads' outputs that name an available expert
  fewshot:FILE     the paper's cross-entropy-method (CEM) search over α, maximising the mean
                   log-likelihood of the user's examples (FILE: text, or a JSON list of strings)
  expert:NAME      one expert (α = 1), or fixed weights: expert:prose=0.7,python=0.3
  none             the base model (z = 1)

Nothing here depends on the backend: every step goes through Session.run_segment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neat_edge.bounded import loads_json, read_head
from neat_edge.errors import NeatError

STRATEGIES = ("classifier", "fewshot", "expert", "none")
DEFAULT_PASS1_BYTES = 512  # pass 1 sees at most this many bytes of the prompt
FEWSHOT_MAX_BYTES = 4096  # bytes of few-shot examples scored per CEM candidate
MAX_FEWSHOT_FILE_BYTES = 1 << 20  # a JSON list of examples is parsed whole: at most this much
MAX_FEWSHOT_EXAMPLES = 256  # each is scored for every CEM candidate
MAX_PASS1_BYTES = 1 << 20  # pass 1 runs the step graph over what it sees, once per call


@dataclass
class DispatchResult:
    strategy: str
    weights: dict[str, float]  # α per expert (empty: the base model)
    z: np.ndarray = field(repr=False)
    pass1_bytes: int = 0  # bytes the first pass (or the few-shot search) ran over
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"strategy": self.strategy, "weights": {k: float(v) for k, v in self.weights.items()},
                "pass1_bytes": self.pass1_bytes, "seconds": self.seconds, **self.details}

    def describe(self) -> str:
        mix = ", ".join(f"{k} {v:.3f}" for k, v in self.weights.items()) or "base model (z = 1)"
        return f"dispatch {self.strategy}: {mix}  (pass 1: {self.pass1_bytes} bytes, {self.seconds * 1e3:.1f} ms)"


def parse_strategy(spec: str) -> tuple[str, str]:
    """'classifier' | 'fewshot:FILE' | 'expert:NAME[=w,...]' | 'none' -> (strategy, argument)."""
    kind, sep, arg = spec.partition(":")
    if kind not in STRATEGIES:
        raise NeatError(f"unknown dispatch '{spec}' (choose from classifier, fewshot:FILE, expert:NAME, none)")
    if kind in ("fewshot", "expert") and not arg:
        raise NeatError(f"--dispatch {kind} needs an argument: {kind}:{'FILE' if kind == 'fewshot' else 'NAME'}")
    if kind in ("classifier", "none") and sep:
        raise NeatError(f"--dispatch {kind} takes no argument")
    return kind, arg


def side_pass(session, data: bytes, svf_z: np.ndarray, snap: dict | None = None):
    """Run `data` after the stream's current position with `svf_z`, on a snapshot: returns
    (log p of each byte of data, dispatch logits of every segment run). The session is untouched."""
    snap = session.snapshot() if snap is None else snap
    seg_len = session.config.segment_len
    state, patch_state = snap["state"], snap["patch_state"]
    buf = snap["pending"] + bytes(data)
    skip = len(snap["pending"])  # bytes already scored by the stream (not part of data)
    logp, logits = [], []
    for start in range(0, len(buf), seg_len):
        seg = buf[start : start + seg_len]
        out, next_state, next_patch, _ = session.run_segment(seg, state, patch_state, svf_z)
        lo = max(skip - start, 0)
        idx = np.frombuffer(seg, np.uint8).astype(np.int64)
        logp.append(out["byte_logprobs"][0, np.arange(lo, len(seg)), idx[lo:]])
        logits.append(out["dispatch_logits"][0])
        if len(seg) == seg_len:  # a full segment moves the (snapshot's) stream on; a partial one does not
            state, patch_state = next_state, next_patch
    return (np.concatenate(logp) if logp else np.zeros(0, np.float32)), logits


def classifier_weights(session, library, prompt: bytes, max_bytes: int) -> tuple[dict[str, float], int]:
    """α from the dispatch head on pass 1: mean logits over segments, softmax over usable slots."""
    slots = [(i, name) for i, name in enumerate(library.dispatch_slots) if name in library.experts]
    if not slots:
        raise NeatError("this model has no trained dispatch head for its experts: train one with "
                        "`neat train --dispatch-head` (and re-export), or use --dispatch expert:NAME / fewshot:FILE")
    seen, snap = prompt[:max_bytes], session.snapshot()
    if not seen and not snap["pending"]:
        return {}, 0  # nothing to look at: stay on the base model
    _, logits = side_pass(session, seen, np.ones_like(session.svf_z), snap)
    mean = np.mean(np.stack(logits), axis=0).astype(np.float64)
    sel = np.array([mean[i] for i, _ in slots])
    p = np.exp(sel - sel.max())
    p /= p.sum()
    return {name: float(w) for (_, name), w in zip(slots, p)}, len(seen)


def read_examples(path: str | Path) -> list[bytes]:
    """Few-shot examples: a JSON list of at most MAX_FEWSHOT_EXAMPLES strings (a file of at most
    MAX_FEWSHOT_FILE_BYTES), or else the file's first FEWSHOT_MAX_BYTES (all that is scored) as one."""
    p = Path(path)
    if not p.exists():
        raise NeatError(f"few-shot file not found: {p}")
    json_list = p.suffix == ".json"
    raw = read_head(p, "few-shot file", MAX_FEWSHOT_FILE_BYTES if json_list else FEWSHOT_MAX_BYTES, whole=json_list)
    if not raw:
        raise NeatError(f"few-shot file {p} is empty")
    if p.suffix == ".json":
        items = loads_json(raw, f"few-shot file {p}")
        if isinstance(items, list) and len(items) > MAX_FEWSHOT_EXAMPLES:
            raise NeatError(f"few-shot file {p} lists {len(items)} examples (at most {MAX_FEWSHOT_EXAMPLES})")
        if not isinstance(items, list) or not items or not all(isinstance(s, str) and s for s in items):
            raise NeatError(f"few-shot file {p} must be a JSON list of non-empty strings")
        return [s.encode("utf-8", "surrogatepass") for s in items]
    return [raw]


def cem_search(objective, k: int, generations: int = 6, population: int = 12, elites: int = 3,
               init_std: float = 0.5, seed: int = 0) -> tuple[np.ndarray, float, list[float]]:
    """Cross-entropy method (Transformer² §3.3, few-shot adaptation): sample α ~ N(μ, σ²), keep the
    `elites` best, refit μ, σ to them; returns the best α seen, its objective and the best per generation."""
    rng = np.random.default_rng(seed)
    mu, sigma = np.full(k, 1.0 / k), np.full(k, init_std)
    best_alpha, best = mu.copy(), objective(mu)
    history = [best]
    for _ in range(generations):
        pop = mu + sigma * rng.standard_normal((population, k))
        scores = np.array([objective(a) for a in pop])
        order = np.argsort(scores)[::-1]
        top = pop[order[:elites]]
        mu, sigma = top.mean(0), np.maximum(top.std(0), 1e-2)
        if scores[order[0]] > best:
            best, best_alpha = float(scores[order[0]]), pop[order[0]].copy()
        history.append(best)
    return best_alpha, best, history


def fewshot_weights(session, library, examples: list[bytes], generations: int = 6, population: int = 12,
                    seed: int = 0) -> tuple[dict[str, float], int, dict]:
    """α maximising the mean log-likelihood of the examples (each scored from the same snapshot)."""
    names = library.names
    if not names:
        raise NeatError("no experts in this bundle's experts/ folder: nothing to mix")
    examples = [e[:FEWSHOT_MAX_BYTES] for e in examples]
    snap = session.snapshot()
    flats = np.stack([library.get(n).flat(library.layout) for n in names]).astype(np.float64)
    n_bytes = sum(len(e) for e in examples)

    def objective(alpha: np.ndarray) -> float:
        z = (alpha @ flats).astype(np.float32)
        return float(sum(side_pass(session, e, z, snap)[0].astype(np.float64).sum() for e in examples)) / n_bytes

    alpha, best, history = cem_search(objective, len(names), generations, population, seed=seed)
    base = float(sum(side_pass(session, e, np.ones_like(session.svf_z), snap)[0].astype(np.float64).sum()
                     for e in examples)) / n_bytes
    details = {"fewshot_bits_per_byte": -best / np.log(2), "fewshot_base_bits_per_byte": -base / np.log(2),
               "cem_best_per_generation": [-h / np.log(2) for h in history]}
    return {n: float(a) for n, a in zip(names, alpha)}, n_bytes, details


def fixed_weights(library, arg: str) -> dict[str, float]:
    """'NAME' -> {NAME: 1}; 'a=0.7,b=0.3' -> those weights."""
    if "=" not in arg:
        library.get(arg)
        return {arg: 1.0}
    weights = {}
    for part in arg.split(","):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise NeatError(f"bad expert weight '{part}' (expected NAME=NUMBER)") from None
        library.get(name.strip())
    return weights


def dispatch(session, prompt: bytes, strategy: str = "classifier", max_bytes: int = DEFAULT_PASS1_BYTES,
             seed: int = 0) -> DispatchResult:
    """Choose α for `prompt`, set session.svf_z = Σ α_k z_k, return what was chosen. The stream
    state (memory included) is not changed."""
    kind, arg = parse_strategy(strategy)
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or not 0 <= max_bytes <= MAX_PASS1_BYTES:
        raise NeatError(f"max_bytes (the pass-1 byte budget) must be an integer in 0..{MAX_PASS1_BYTES}, got {max_bytes!r}")
    start = time.perf_counter()
    library = session.experts
    details, seen = {}, 0
    if kind == "none":
        weights = {}
    elif library is None:
        raise NeatError("this bundle was exported before expert support: re-export it to use --dispatch")
    elif kind == "classifier":
        weights, seen = classifier_weights(session, library, bytes(prompt), max_bytes)
    elif kind == "fewshot":
        weights, seen, details = fewshot_weights(session, library, read_examples(arg), seed=seed)
    else:
        weights = fixed_weights(library, arg)
    z = library.mix(weights) if library is not None else np.ones_like(session.svf_z)
    if z.shape != session.svf_z.shape:
        raise NeatError(f"the expert library's z has {z.shape[0]} values, the graph's svf_z {session.svf_z.shape[0]}")
    session.svf_z = z
    if arg:
        details = {"argument": arg, **details}
    return DispatchResult(kind, weights, z, seen, time.perf_counter() - start, details)
