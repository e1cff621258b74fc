"""Training Transformer² experts (z-vectors) and the dispatch head on a trained base model.

Expert (Transformer² §3.1, SVF): the base weights are frozen in SVF form W = U diag(σ) Vᵀ and only
z (one scale per singular value, all layers: the graph input svf_z) is trained, from z = 1, on one
domain's bytes. Objectives:
  nll        next-byte cross-entropy over chained segments (memory carried, as in base training);
  reinforce  the paper's objective J(z) = E[log π_z(ŷ|x) r(ŷ, y)] − λ KL(π_z ‖ π_base), with the
             policy sampling each byte ŷ_i given the true prefix, reward r = +1 if ŷ_i is the real
             byte and −1 otherwise (minus the batch mean reward as a baseline), λ = kl_coef.
Dispatch head: the model's `dispatch_head` (a linear layer on the mean latent of a segment) becomes a
classifier over the experts, from pass-1 features exactly as the session computes them (logits of the
segments of a prompt averaged); everything else frozen. Afterwards `evaluate_library` measures
routing accuracy and bits-per-byte (base vs own expert vs two-pass dispatch) on held-out files
through the runtime Session, i.e. the deployed code path.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from neat_edge.errors import NeatError
from neat_edge.experts import (
    DISPATCH_HEAD_FILE,
    EXPERTS_DIR,
    ExpertLibrary,
    base_model_id,
    check_name,
    layout_of,
    save_dispatch_head,
    save_expert,
)
from neat_edge.fileio import atomic_write_json
from neat_edge.model.checkpoint import load_checkpoint
from neat_edge.model.svf import svf_layout
from neat_edge.training.data import ByteCorpus
from neat_edge.training.patches import WindowPatches
from neat_edge.training.train import chained_nll, evaluate_bpb

LN2 = math.log(2.0)
OBJECTIVES = ("nll", "reinforce")


@dataclass
class ExpertOptions:
    steps: int = 200
    batch_size: int = 8
    segments: int = 2  # segments per training window, memory carried
    lr: float = 1.5e-2  # Adam on z, warmup then cosine to 10 %
    warmup: int = 20
    clip: float = 1.0
    eval_every: int = 25  # validation on fixed training-split windows; the best z (z = 1 included) is kept
    val_bytes: int = 16384
    objective: str = "nll"
    kl_coef: float = 0.1  # λ of the REINFORCE objective
    seed: int = 0
    eval_bytes: int = 32768  # held-out bytes for the bits-per-byte numbers in the expert's metadata
    device: str = "cpu"


@contextlib.contextmanager
def svf_z_override(model, z: torch.Tensor):
    """Run chained_nll / evaluate_bpb (which take z from model.default_svf_z()) with this z."""
    model.default_svf_z = lambda: z
    try:
        yield model
    finally:
        del model.default_svf_z


def _progress(label: str, show: bool):
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(), disable=not show)


def _window_patches(model, base: Path) -> WindowPatches:
    if model.cfg.patching != "entropy":
        return WindowPatches(model.cfg)
    from neat_edge.model.entropy import load_patching

    found = load_patching(base)
    if found is None:
        raise NeatError(f"{base} uses entropy patching but holds no entropy model")
    return WindowPatches(model.cfg, found[0], found[1])


def _reinforce_loss(model, windows, z, patches: WindowPatches, kl_coef: float, gen: torch.Generator):
    """−J(z) of the REINFORCE objective over chained segments (see the module docstring)."""
    seg = model.cfg.segment_len
    plan = patches(windows)
    ones = torch.ones_like(z)
    state, base_state = model.initial_state(windows.shape[0]), model.initial_state(windows.shape[0])
    total, n = windows.new_zeros((), dtype=torch.float32), 0
    for i in range(windows.shape[1] // seg):
        x = windows[:, i * seg : (i + 1) * seg]
        out, state = model.step(x, *plan[i], z, state)
        with torch.no_grad():
            base_out, base_state = model.step(x, *plan[i], ones, base_state)
        logp = out["byte_logprobs"]
        sampled = torch.multinomial(logp.detach().exp().flatten(0, 1), 1, generator=gen).view_as(x)
        reward = (sampled == x).float() * 2 - 1
        advantage = reward - reward.mean()
        policy = (logp.gather(-1, sampled.unsqueeze(-1)).squeeze(-1) * advantage).sum()
        kl = (logp.exp() * (logp - base_out["byte_logprobs"])).sum()
        total = total - policy + kl_coef * kl
        n += x.numel()
    return total / n


def train_expert(name: str, domain: str, base: str | Path, data_paths, out_dir: str | Path,
                 opts: ExpertOptions, show_progress: bool = True) -> dict:
    """Train one expert's z on `data_paths` and write out_dir/NAME.safetensors."""
    check_name(name)
    if opts.objective not in OBJECTIVES:
        raise NeatError(f"unknown expert objective '{opts.objective}' (choose from {', '.join(OBJECTIVES)})")
    if not domain:
        raise NeatError("an expert needs a --domain (what its data are, e.g. 'English prose')")
    base = Path(base)
    model = load_checkpoint(base).to(opts.device)
    for p in model.parameters():
        p.requires_grad_(False)
    corpus = ByteCorpus.from_paths(data_paths)
    patches = _window_patches(model, base)
    torch.manual_seed(opts.seed)
    rng, gen = np.random.default_rng(opts.seed), torch.Generator().manual_seed(opts.seed)
    z = torch.nn.Parameter(torch.ones(model.svf_rank, device=opts.device))
    optim = torch.optim.Adam([z], lr=opts.lr)

    def lr_factor(step):  # linear warmup, then cosine down to 10 %
        if step < opts.warmup:
            return (step + 1) / opts.warmup
        progress = (step - opts.warmup) / max(1, opts.steps - opts.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_factor)
    window = model.cfg.segment_len * opts.segments
    val_len = max(window, 4 * model.cfg.segment_len)
    val = torch.from_numpy(corpus.sample(np.random.default_rng(opts.seed + 1), max(1, opts.val_bytes // val_len),
                                         val_len)).to(opts.device)

    @torch.no_grad()
    def val_loss() -> float:
        return float(chained_nll(model, val, model.initial_state(val.shape[0]), patches=patches)[0]) / val.numel()

    history, start = [], time.time()
    with _progress(f"expert {name}", show_progress) as progress, svf_z_override(model, z):
        best_val, best_z, best_step = val_loss(), z.detach().clone(), 0
        val_curve = [(0, best_val)]
        task = progress.add_task(name, total=opts.steps, info="")
        for step in range(1, opts.steps + 1):
            x = torch.from_numpy(corpus.sample(rng, opts.batch_size, window)).to(opts.device)
            if opts.objective == "nll":
                nll, _ = chained_nll(model, x, model.initial_state(opts.batch_size), patches=patches)
                loss = nll / x.numel()
            else:
                loss = _reinforce_loss(model, x, z, patches, opts.kl_coef, gen)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([z], opts.clip)
            if torch.isfinite(loss) and torch.isfinite(z.grad).all():
                optim.step()
            sched.step()
            history.append(float(loss.detach()))
            if step % opts.eval_every == 0 or step == opts.steps:
                val_curve.append((step, val_loss()))
                if val_curve[-1][1] < best_val:
                    best_val, best_z, best_step = val_curve[-1][1], z.detach().clone(), step
            progress.update(task, advance=1, info=f"loss {np.mean(history[-10:]):.4f}  val {best_val / LN2:.4f} bpb")
    train_seconds = time.time() - start
    z_final = best_z
    base_bpb = evaluate_bpb(model, corpus.heldout, max_bytes=opts.eval_bytes, device=opts.device, patches=patches)
    with svf_z_override(model, z_final):
        expert_bpb = evaluate_bpb(model, corpus.heldout, max_bytes=opts.eval_bytes, device=opts.device,
                                  patches=patches)
    result = {
        "name": name, "domain": domain, "base": str(base), "base_id": base_model_id(model),
        "objective": opts.objective, "options": asdict(opts),
        "data": [str(Path(p).resolve()) for p in data_paths],
        "train_bytes": corpus.train_bytes, "heldout_bytes": corpus.heldout_bytes,
        "heldout_bits_per_byte_base": base_bpb, "heldout_bits_per_byte_expert": expert_bpb,
        "train_seconds": round(train_seconds, 1), "command": " ".join(["neat", *sys.argv[1:]]),
        "z_range": [float(z_final.min()), float(z_final.max())], "best_step": best_step,
        "val_bits_per_byte": [(s, round(v / LN2, 4)) for s, v in val_curve],
        "loss_curve": [round(v, 4) for v in history[:: max(1, len(history) // 50)]],
    }
    flat = z_final.cpu().numpy()
    per_layer = {n: flat[o : o + r] for n, o, r in svf_layout(model)}
    meta = {k: result[k] for k in ("base_id", "objective", "data", "train_bytes", "heldout_bits_per_byte_base",
                                    "heldout_bits_per_byte_expert", "train_seconds", "command")}
    meta.update(steps=opts.steps, best_step=best_step)
    path = save_expert(Path(out_dir) / f"{name}.safetensors", domain, per_layer, meta)
    result["file"] = str(path)
    return result


# --- dispatch head --------------------------------------------------------------------------------
def _prompt_windows(stream, rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    if len(stream) <= length:
        raise NeatError(f"a domain has only {len(stream)} bytes in this split; need more than {length}")
    starts = rng.integers(0, len(stream) - length, size=n)
    return np.stack([stream.read(int(s), length) for s in starts]).astype(np.int64)


@torch.no_grad()
def pass1_features(model, windows: torch.Tensor, patches: WindowPatches) -> torch.Tensor:
    """The dispatch head's input as the session's pass 1 sees it: NeatModel.dispatch_input of each
    segment of a prompt [B, L] (the last one partial) from a fresh stream, averaged over segments (mean
    logits = head(mean input)). Only the local encoder runs: dispatch_input needs nothing else."""
    seg, batch, cfg = model.cfg.segment_len, windows.shape[0], model.cfg
    full = windows.shape[1] // seg * seg
    plan = list(patches(windows[:, :full])) if full else []
    if windows.shape[1] > full:
        if cfg.patching != "fixed":
            raise NeatError("dispatch-head prompts must be whole segments with entropy patching")
        from neat_edge.patching import segment_patches

        ids, mask = segment_patches(windows.shape[1] - full, cfg.patch_size)
        plan.append((torch.from_numpy(ids).expand(batch, -1), torch.from_numpy(mask).expand(batch, -1)))
    context, z, feats = model.initial_state(batch)["byte_context"], model.default_svf_z(), []
    for i, (ids, mask) in enumerate(plan):
        tokens = torch.cat([context, windows[:, i * seg : (i + 1) * seg]], dim=1)  # as NeatModel.step
        _, pooled = model.encoder(tokens, ids, mask.shape[1], z)
        feats.append(model.dispatch_input(pooled, mask))
        context = tokens[:, tokens.shape[1] - cfg.context_len :]
    return torch.stack(feats).mean(0)


def train_dispatch_head(base: str | Path, experts_dir: str | Path | None = None, samples: int = 2400,
                        max_prompt_bytes: int = 512, seed: int = 0, evaluate: bool = True,
                        show_progress: bool = True) -> dict:
    """Fit the dispatch head as a classifier over the experts in experts_dir (default base/experts),
    each on the training split of the data it was trained on; write base/dispatch_head.safetensors and,
    with evaluate, base/dispatch_log.json (routing accuracy, bits-per-byte)."""
    base = Path(base)
    folder = Path(experts_dir) if experts_dir else base / EXPERTS_DIR
    model = load_checkpoint(base)
    library = ExpertLibrary(folder, layout_of(model), base_model_id(model))
    names = library.names
    if len(names) < 2:
        skipped = "; skipped: " + "; ".join(library.skipped.values()) if library.skipped else ""
        raise NeatError(f"the dispatch head needs at least two usable experts in {folder} "
                        f"(found: {', '.join(names) or 'none'}{skipped})")
    if len(names) > model.cfg.n_experts:
        raise NeatError(f"{len(names)} experts but the dispatch head has {model.cfg.n_experts} outputs (n_experts)")
    corpora = {n: expert_corpus(library.get(n)) for n in names}
    patches = _window_patches(model, base)
    rng = np.random.default_rng(seed)
    seg = model.cfg.segment_len
    lengths = [n for n in (seg // 2, seg, 2 * seg, 3 * seg, max_prompt_bytes) if n <= max_prompt_bytes]
    feats, labels = [], []
    with _progress("dispatch head", show_progress) as progress:
        task = progress.add_task("features", total=len(names) * len(lengths), info="pass-1 features")
        for k, n in enumerate(names):
            for length in lengths:
                if model.cfg.patching != "fixed":
                    length = max(seg, length // seg * seg)
                w = _prompt_windows(corpora[n].train_stream, rng, samples // len(lengths), length)
                feats.append(pass1_features(model, torch.from_numpy(w), patches))
                labels.append(torch.full((len(w),), k))
                progress.update(task, advance=1)
    x, y = torch.cat(feats), torch.cat(labels)
    weight, bias, train_acc = _fit_softmax(x, y, len(names))
    full_w = torch.zeros_like(model.dispatch_head.weight)
    full_b = torch.zeros_like(model.dispatch_head.bias)
    full_w[: len(names)], full_b[: len(names)] = weight, bias
    path = save_dispatch_head(base / DISPATCH_HEAD_FILE, full_w.numpy(), full_b.numpy(), names, base_model_id(model),
                              {"samples": len(y), "train_accuracy": train_acc, "prompt_lengths": lengths})
    result = {"dispatch_head": str(path), "experts": names, "samples": len(y), "train_accuracy": train_acc}
    if evaluate:
        result["evaluation"] = evaluate_library(load_checkpoint(base), corpora, max_prompt_bytes=max_prompt_bytes,
                                                seed=seed + 1, show_progress=show_progress)
    atomic_write_json(base / "dispatch_log.json", result)
    return result


def _fit_softmax(x: torch.Tensor, y: torch.Tensor, k: int, l2: float = 1e-4, iters: int = 200):
    """Multinomial logistic regression (the dispatch head) by L-BFGS on standardized features, folded
    back into the head's own weight and bias."""
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    xs = (x - mean) / std
    w = torch.zeros(k, x.shape[1], requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ w.T + b, y) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        acc = float(((xs @ w.T + b).argmax(-1) == y).float().mean())
        weight = w / std  # (x − μ)/s · wᵀ + b = x · (w/s)ᵀ + (b − μ/s · wᵀ)
        return weight, b - (mean / std) @ w.T, acc


def expert_corpus(expert) -> ByteCorpus:
    raw = expert.metadata.get("data")
    paths = json.loads(raw) if raw else []
    missing = [p for p in paths if not Path(p).exists()]
    if not paths or missing:
        raise NeatError(f"expert '{expert.name}' records no readable training data "
                        f"({missing[0] if missing else 'none recorded'}): retrain it here with `neat train --expert`")
    return ByteCorpus.from_paths(paths)


# --- measurements through the runtime session -----------------------------------------------------
def evaluate_library(model, corpora: dict[str, ByteCorpus], prompts: int = 200, prompt_lengths=(256, 512),
                     chunks: int = 24, chunk_bytes: int = 1024, max_prompt_bytes: int = 512, seed: int = 1,
                     show_progress: bool = True) -> dict:
    """On held-out files of each expert's domain, through Session (the deployed two-pass flow):
    routing accuracy of the classifier on `prompts` random windows of each prompt length (the headline,
    `routing_accuracy`, at the pass-1 budget max_prompt_bytes), and bits-per-byte of `chunks` random
    chunks of `chunk_bytes` from a fresh stream with the base z, the domain's own expert, and classifier
    dispatch (pass 1 on the chunk's first max_prompt_bytes, pass 2 scores the whole chunk)."""
    from neat_edge.runtimes import open_model_session

    session = open_model_session(model)
    rng = np.random.default_rng(seed)
    out = {"prompt_lengths": list(prompt_lengths), "pass1_bytes": max_prompt_bytes, "chunk_bytes": chunk_bytes,
           "domains": {}}
    with _progress("evaluate", show_progress) as progress:
        task = progress.add_task("eval", total=len(corpora) * (prompts * len(prompt_lengths) + chunks),
                                 info="routing + bits/byte")
        for name, corpus in corpora.items():
            by_length = {}
            for length in prompt_lengths:
                hits = 0
                for w in _prompt_windows(corpus.heldout_stream, rng, prompts, length):
                    session.reset()
                    weights = session.dispatch(w.astype(np.uint8).tobytes(), "classifier",
                                               max_bytes=max_prompt_bytes).weights
                    hits += max(weights, key=weights.get) == name
                    progress.update(task, advance=1)
                by_length[length] = hits / prompts
            nll = {"base": 0.0, "expert": 0.0, "dispatch": 0.0}
            own = session.experts.mix({name: 1.0})
            for w in _prompt_windows(corpus.heldout_stream, rng, chunks, chunk_bytes):
                chunk = w.astype(np.uint8).tobytes()
                for how in nll:
                    session.reset()
                    if how == "dispatch":
                        session.dispatch(chunk, "classifier", max_bytes=max_prompt_bytes)
                    else:
                        session.svf_z = own if how == "expert" else np.ones_like(own)
                    nll[how] -= float(session.score(chunk).astype(np.float64).sum())
                progress.update(task, advance=1)
            n = chunks * chunk_bytes
            headline = by_length.get(max_prompt_bytes, by_length[max(by_length)])
            out["domains"][name] = {
                "routing_accuracy": headline, "routing_accuracy_by_prompt_bytes": by_length,
                "routing_samples": prompts, **{f"bits_per_byte_{k}": v / n / LN2 for k, v in nll.items()},
                "heldout_files": len(corpus.heldout_files),
            }
    return out
