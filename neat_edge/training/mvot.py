"""MVoT training: the image tokenizer, visual-task windows mixed with text, and L = L_CE + λ·L_D.

    neat train --visual-task [--base CKPT] --data TEXT... --out DIR [--mvot-lambda λ] [--visual-fraction f]

1. The VQ tokenizer (model/vq.py) is trained on rendered grid states of the training maps (or taken
   from --base when it has one for the same grid); its codebook is copied into the model.
2. Each batch has round(f·B) windows of visual-task episodes (training/visual_task.py; interleaved,
   text-only, or both) and the rest from the text corpus, so the text skill is kept while images are learnt.
3. The loss of a window is summed over its segments with the state carried (as chained_nll does):
   byte cross-entropy where the target is a byte or special, image-code cross-entropy where it is an
   image token, plus λ·L_D there (MVoT §3.2, model/mvot.py); fit() divides by the tokens of the batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neat_edge.config import NeatConfig
from neat_edge.errors import NeatError
from neat_edge.fileio import atomic_write_json
from neat_edge.model.checkpoint import build, load_checkpoint, save_checkpoint
from neat_edge.model.mvot import code_discrepancy, mvot_segment_loss
from neat_edge.model.vq import (
    attach_tokenizer,
    has_tokenizer,
    image_size,
    load_tokenizer,
    save_tokenizer,
    to_tensor,
    train_tokenizer,
)
from neat_edge.training import visual_task as task
from neat_edge.training.data import ByteCorpus
from neat_edge.training.train import LN2, TrainOptions, chained_segments, evaluate_bpb, fit

VISUAL_MODES = ("mixed", "interleaved", "text")


@dataclass
class VisualOptions:
    lam: float = 1.0  # λ of L_D (0: plain cross-entropy on image tokens)
    fraction: float = 0.5  # share of each batch that is visual-task windows (the rest: the text corpus)
    mode: str = "mixed"  # episodes: interleaved, text (no images), or mixed (every map both ways)
    maps: int = 2000  # training maps
    tokenizer_steps: int = 400
    eval_episodes: int = 24  # held-out episodes measured at the end (training/mvot_eval.py)


class MixedCorpus:
    """A ByteCorpus whose batches are part text windows, part visual-task windows (int64 tokens).
    Held-out text (bits/byte during training) is the text corpus's own held-out split."""

    def __init__(self, text: ByteCorpus, visual: task.EpisodeStream, fraction: float):
        self.text, self.visual, self.fraction = text, visual, fraction
        self.heldout_stream, self.files = text.heldout_stream, text.files
        self.train_bytes, self.heldout_bytes = text.train_bytes, text.heldout_bytes

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
        n_visual = int(round(batch * self.fraction))
        rows = [self.visual.sample(rng, n_visual, length)] if n_visual else []
        if batch - n_visual:
            rows.append(self.text.sample(rng, batch - n_visual, length))
        return np.concatenate(rows)


def mvot_loss(lam: float, discrepancy: torch.Tensor, stats: dict):
    """A fit() loss_fn: Σ over segments of text NLL + image NLL + λ·L_D, state carried (truncated
    backprop every tbptt segments). Adds image-token counts and argmax hits to `stats`."""

    def loss(model, windows, state, tbptt=None, patches=None, grad_checkpointing=False):
        total, last = windows.new_zeros((), dtype=torch.float32), state
        for x, out, last in chained_segments(model, windows, state, tbptt, patches, grad_checkpointing):  # noqa: B007
            part = mvot_segment_loss(out["byte_logprobs"], out["image_logits"], x,
                                     discrepancy.to(x.device) if lam else None)
            total = total + part["text_nll"] + part["image_nll"] + (lam * part["token_discrepancy"] if lam else 0.0)
            for key in ("image_nll", "image_count", "image_correct", "token_discrepancy"):
                if key in part:
                    stats[key] = stats.get(key, 0.0) + float(part[key].detach())
        return total, last

    return loss


def visual_stream(cfg: NeatConfig, tok, vopts: VisualOptions, seed: int = 0) -> tuple[task.EpisodeStream, dict]:
    """Training episodes (maps never among the held-out ones) as one token stream."""
    if vopts.mode not in VISUAL_MODES:
        raise NeatError(f"unknown visual mode '{vopts.mode}' (choose from {', '.join(VISUAL_MODES)})")
    eps = task.episodes(vopts.maps)
    size = image_size(cfg)
    arrays = []
    for ep in eps:
        if vopts.mode in ("interleaved", "mixed"):
            codes = tok.encode(to_tensor(ep.images(size))).numpy()
            arrays.append(task.episode_tokens(ep, codes)[0])
        if vopts.mode in ("text", "mixed"):
            arrays.append(task.episode_tokens(ep, None)[0])
    order = np.random.default_rng(seed).permutation(len(arrays))
    stream = task.EpisodeStream([arrays[i] for i in order])
    return stream, {"maps": len(eps), "episodes": len(arrays), "tokens": len(stream), "mode": vopts.mode}


def prepare_model(cfg: NeatConfig, base: str | Path | None):
    """The model to train: `base` (a trained checkpoint, dense) with cfg's image grid and code width,
    or a fresh cfg model. Returns (model, tokenizer from base or None)."""
    if base is None:
        return build(cfg), None
    start = load_checkpoint(base, svf=False)
    new_cfg = dataclasses.replace(start.cfg, image_grid=cfg.image_grid, image_code_dim=cfg.image_code_dim)
    model = build(new_cfg)
    if new_cfg.image_code_dim == start.cfg.image_code_dim:
        model.load_state_dict(start.state_dict())
    else:  # a new code width: every weight but the image embedding's projection and codebook
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in start.state_dict().items() if own[k].shape == v.shape}, strict=False)
    tok = load_tokenizer(base, new_cfg) if has_tokenizer(base) and new_cfg == start.cfg else None
    return model, tok


def train_visual(cfg: NeatConfig, data_paths, out_dir, opts: TrainOptions, vopts: VisualOptions,
                 base: str | Path | None = None, show_progress: bool = True) -> dict:
    """Train (or fine-tune `base`) on text + visual-task episodes; writes the checkpoint, the image
    tokenizer (vq.safetensors) and train_log.json (with held-out text bits/byte and MVoT measurements)."""
    from neat_edge.training.mvot_eval import evaluate_visual

    if vopts.mode not in VISUAL_MODES:
        raise NeatError(f"unknown visual mode '{vopts.mode}' (choose from {', '.join(VISUAL_MODES)})")
    model, tok = prepare_model(cfg, base)
    cfg = model.cfg
    if cfg.patching != "fixed":
        raise NeatError("the visual task needs fixed patching (an image is fixed patches, never entropy patches)")
    if not 0.0 < vopts.fraction <= 1.0:
        raise NeatError("--visual-fraction must be in (0, 1]")
    tok_info = {"reused_from": str(base)}
    if tok is None:
        maps = task.episodes(min(vopts.maps, 400))
        tok, tok_info = train_tokenizer(cfg, task.all_states_images(maps, image_size(cfg)), vopts.tokenizer_steps,
                                        seed=opts.seed)
    model.set_image_codebook(tok.codebook)
    discrepancy = code_discrepancy(tok.codebook.detach())
    stream, stream_info = visual_stream(cfg, tok, vopts, opts.seed)
    text = ByteCorpus.from_paths(data_paths)
    corpus = MixedCorpus(text, stream, vopts.fraction)
    before = None
    if base is not None:
        before = evaluate_bpb(model.eval(), text.heldout_stream.array(opts.eval_bytes), device=opts.device)
    stats: dict = {}
    result = fit(model, corpus, opts, out_dir, save_checkpoint, show_progress=show_progress, label="mvot",
                 loss_fn=mvot_loss(vopts.lam, discrepancy, stats))
    save_tokenizer(tok, out_dir, {"pixel_mse": tok_info.get("pixel_mse", "")})
    attach_tokenizer(model, tok)
    count = max(stats.get("image_count", 0.0), 1.0)
    result["mvot"] = {
        "options": dataclasses.asdict(vopts), "tokenizer": tok_info, "episodes": stream_info,
        "discrepancy_mean": float(discrepancy.mean()),
        "train_image_token_accuracy_run_mean": stats.get("image_correct", 0.0) / count,
        "train_image_bits_per_token_run_mean": stats.get("image_nll", 0.0) / count / LN2,
        "text_heldout_bits_per_byte_before": before,
        "heldout": evaluate_visual(model, tok, vopts.eval_episodes) if vopts.eval_episodes else None,
    }
    atomic_write_json(Path(out_dir) / "train_log.json", result)
    return result
