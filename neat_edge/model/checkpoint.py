"""Checkpoints: a directory with `config.json` + `model.safetensors` (never pickle).

`load("tiny")` builds a preset with a deterministic seeded init; `load("default")` is the small
trained tiny model shipped inside the package; anything else is a checkpoint directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from neat_edge.config import PRESETS, NeatConfig
from neat_edge.errors import NeatError
from neat_edge.fileio import JOURNAL, atomic_write, atomic_write_bytes, commit_together, recover
from neat_edge.model.mvot import IMAGE_EMBED_KEYS
from neat_edge.model.neat import NeatModel
from neat_edge.model.svf import convert_to_svf

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "tiny"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def build(cfg: NeatConfig) -> NeatModel:
    """A fresh model with the deterministic init of cfg.seed (does not disturb the global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return NeatModel(cfg)


def save_checkpoint(model: NeatModel, out_dir: str | Path, extra_tensors: dict | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update(extra_tensors or {})
    is_svf = any(k.endswith(".U") for k in tensors)
    metadata = {"format": "neat-edge", "svf": "1" if is_svf else "0", "fingerprint": model.cfg.fingerprint()}
    with commit_together(out):  # weights and config land together (a kill mid-save leaves the old pair)
        atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        atomic_write_bytes(out / CONFIG_FILE, (model.cfg.to_json() + "\n").encode())
    return out


def is_checkpoint_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file()


def load_checkpoint(path: str | Path, svf: bool = True, svf_rank: int | None = None) -> NeatModel:
    path = Path(path)
    if not path.exists():
        raise NeatError(f"checkpoint not found: {path}")
    if (path / JOURNAL).is_file() and os.access(path, os.W_OK):
        recover(path)  # a save killed after its commit point: finish it (the new weights are complete)
    if not is_checkpoint_dir(path):
        raise NeatError(f"{path} is not a checkpoint directory (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    cfg = NeatConfig.load(path / CONFIG_FILE)
    try:
        tensors = load_file(str(path / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as exc:
        raise NeatError(f"corrupted weights file {path / WEIGHTS_FILE}: {exc}") from None
    model = build(cfg)
    if any(k.endswith(".U") for k in tensors):  # an SVF checkpoint, possibly truncated: ranks from σ
        convert_to_svf(model, ranks={k[: -len(".S")]: v.shape[0] for k, v in tensors.items() if k.endswith(".S")})
    own = model.state_dict()
    # A checkpoint from before image tokens entered the stream lacks only the MVoT embedding: it keeps
    # its seeded init (zero codebook) until `neat train --visual-task` fills it in.
    no_images = set(IMAGE_EMBED_KEYS) - set(tensors)
    missing, unexpected = sorted(set(own) - set(tensors) - no_images), sorted(set(tensors) - set(own))
    if missing or unexpected:
        name = (missing or unexpected)[0]
        raise NeatError(f"weights in {path} do not match its config ({'missing' if missing else 'unexpected'} "
                        f"tensor '{name}')")
    for k, v in tensors.items():
        if own[k].shape != v.shape:
            raise NeatError(f"weights in {path} do not match its config (tensor '{k}' has shape "
                            f"{tuple(v.shape)}, expected {tuple(own[k].shape)})")
    model.load_state_dict(tensors, strict=not no_images)
    model.svf_truncation_error = {}
    if svf and not any(k.endswith(".U") for k in tensors):
        model.svf_truncation_error = convert_to_svf(model, rank=svf_rank)
    # Where the weights came from: its expert library (experts/) and trained dispatch head travel
    # with the checkpoint, and export copies them into the bundle.
    model.source_dir = path
    from neat_edge.experts import apply_dispatch_head

    apply_dispatch_head(model, path)
    return model.eval()


def load(path_or_preset: str | Path = "default", svf: bool = True, svf_rank: int | None = None) -> NeatModel:
    """The PyTorch model for a checkpoint directory, a preset name, or "default" (bundled tiny).
    svf_rank truncates every SVF layer to that rank (the errors land in model.svf_truncation_error)."""
    key = str(path_or_preset)
    if key == "default":
        if not is_checkpoint_dir(DEFAULT_CHECKPOINT):
            raise NeatError(f"the bundled default checkpoint is missing from {DEFAULT_CHECKPOINT}")
        return load_checkpoint(DEFAULT_CHECKPOINT, svf=svf, svf_rank=svf_rank)
    if key in PRESETS and not Path(key).exists():
        model = build(PRESETS[key])
        model.svf_truncation_error = convert_to_svf(model, rank=svf_rank) if svf else {}
        return model.eval()
    return load_checkpoint(path_or_preset, svf=svf, svf_rank=svf_rank)
