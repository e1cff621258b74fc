"""BLT entropy model: a small causal byte LM whose next-byte entropy drives patching (BLT §2.3).

It is its own model with its own config and checkpoint, exported as its own graph: patching is
data-dependent and belongs to the runtime, so the runtime runs this graph, turns entropies into
patch boundaries (neat_edge.patching) and feeds `patch_ids` to the step graph.

    step(bytes [B,S], state.byte_context [B,W]) -> byte_logprobs [B,S,256], entropy [B,S], next context

Position i of a segment predicts byte i from the W carried bytes and the bytes before i, so the
entropy of byte i never depends on byte i or later: patches can be decided before a byte is known,
and streaming gives the same entropies as one pass.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from neat_edge.config import BOS
from neat_edge.errors import NeatError
from neat_edge.fileio import atomic_write, atomic_write_json
from neat_edge.model.blt import LocalBlock
from neat_edge.model.layers import RMSNorm

CONFIG_FILE, WEIGHTS_FILE = "entropy_config.json", "entropy_model.safetensors"


@dataclass(frozen=True)
class EntropyConfig:
    context_len: int = 64  # bytes carried across segments
    segment_len: int = 128
    dim: int = 96
    layers: int = 2
    heads: int = 4
    seed: int = 0

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if f.name == "seed" else 1):
                raise NeatError(f"entropy config field '{f.name}' must be a positive integer, got {value!r}")
        if self.dim % self.heads:
            raise NeatError("entropy config field 'dim' must be divisible by 'heads'")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EntropyConfig:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise NeatError(f"unknown entropy config field '{unknown[0]}'")
        return cls(**data)


class EntropyModel(nn.Module):
    def __init__(self, cfg: EntropyConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(256 + 1, cfg.dim)  # bytes + BOS (index 256)
        self.layers = nn.ModuleList(LocalBlock(cfg.dim, cfg.heads) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, 256)

    def initial_state(self, batch: int = 1) -> dict[str, torch.Tensor]:
        return {"byte_context": torch.full((batch, self.cfg.context_len), BOS, dtype=torch.long,
                                           device=self.head.weight.device)}

    def step(self, data: torch.Tensor, state: dict[str, torch.Tensor]):
        context = state["byte_context"]
        w = context.shape[1]
        tokens = torch.cat([context, data], dim=1)
        x = self.embed(torch.clamp(tokens, max=256))  # specials above BOS read as BOS
        pos = torch.arange(tokens.shape[1], device=data.device, dtype=x.dtype)
        for layer in self.layers:
            x = layer(x, pos)
        logprobs, entropy = self._predict(x[:, w - 1 : tokens.shape[1] - 1])  # position i predicts byte i
        return ({"byte_logprobs": logprobs, "entropy": entropy},
                {"byte_context": tokens[:, tokens.shape[1] - w:]})

    def _predict(self, x):
        logprobs = torch.log_softmax(self.head(self.norm(x)), dim=-1)
        return logprobs, -(logprobs.exp() * logprobs).sum(-1)

    # --- incremental decoding (runtimes/decoding.py): one byte at a time, caches as state ----------
    def cache_layout(self) -> dict[str, tuple[tuple, str]]:
        """Self-attention keys/values of the window [context ‖ segment] per layer."""
        cfg = self.cfg
        shape = (cfg.heads, cfg.context_len + cfg.segment_len, cfg.dim // cfg.heads)
        return {f"enc.{l}.{kv}": (shape, "float32") for l in range(cfg.layers) for kv in "kv"}

    def decode_start(self, byte_context):
        """A new segment: the entropy of its first byte's distribution [B] and the caches."""
        keep = []
        x = self.embed(torch.clamp(byte_context, max=256))
        pos = torch.arange(byte_context.shape[1], device=byte_context.device, dtype=x.dtype)
        for layer in self.layers:
            x = layer(x, pos, keep_kv=keep)
        cache = {}
        for l, (k, v) in enumerate(keep):
            cache[f"enc.{l}.k"] = torch.nn.functional.pad(k, (0, 0, 0, self.cfg.segment_len))
            cache[f"enc.{l}.v"] = torch.nn.functional.pad(v, (0, 0, 0, self.cfg.segment_len))
        return self._predict(x[:, -1:])[1][:, 0], cache

    def decode_byte(self, token, position, cache):
        """Byte token [B,1] at segment position [B]: the entropy [B] at position + 1, and the caches."""
        slot = position + self.cfg.context_len
        x = self.embed(torch.clamp(token, max=256))
        new = {}
        for l, layer in enumerate(self.layers):
            x, new[f"enc.{l}.k"], new[f"enc.{l}.v"] = layer.step(x, slot, cache[f"enc.{l}.k"], cache[f"enc.{l}.v"])
        return self._predict(x)[1][:, 0], new

    @torch.no_grad()
    def entropies(self, data: bytes) -> np.ndarray:
        """Entropy (nats) of the next-byte distribution at every byte of `data`, from a fresh stream."""
        state = self.initial_state(1)
        out = []
        seg = self.cfg.segment_len
        for start in range(0, len(data), seg):
            chunk = torch.tensor(list(data[start : start + seg]), dtype=torch.long,
                                 device=self.head.weight.device).unsqueeze(0)
            o, state = self.step(chunk, state)
            out.append(o["entropy"][0].cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def build_entropy_model(cfg: EntropyConfig) -> EntropyModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return EntropyModel(cfg)


def save_entropy_model(model: EntropyModel, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "neat-entropy"}))
    atomic_write_json(out / CONFIG_FILE, model.cfg.to_dict())
    return out


def load_entropy_model(path: str | Path) -> EntropyModel:
    path = Path(path)
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise NeatError(f"{path} holds no entropy model (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        cfg = EntropyConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
        tensors = load_file(str(path / WEIGHTS_FILE))
    except (json.JSONDecodeError, SafetensorError, OSError) as exc:
        raise NeatError(f"corrupted entropy model in {path}: {exc}") from None
    model = build_entropy_model(cfg)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise NeatError(f"entropy model weights in {path} do not match its config: {str(exc).splitlines()[0]}") from None
    return model.eval()


PATCHER_FILE = "patcher.json"


def save_patching(out_dir: str | Path, model: EntropyModel, patcher) -> Path:
    """Store an entropy model and its patcher thresholds next to a NEAT checkpoint."""
    out = save_entropy_model(model, out_dir)
    atomic_write_json(out / PATCHER_FILE, dataclasses.asdict(patcher))
    return out


def load_patching(path: str | Path):
    """(EntropyModel, EntropyPatcher) stored in a checkpoint directory, or None if it has none."""
    from neat_edge.patching import EntropyPatcher

    path = Path(path)
    if not (path / PATCHER_FILE).is_file():
        return None
    try:
        patcher = EntropyPatcher(**json.loads((path / PATCHER_FILE).read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise NeatError(f"corrupted {path / PATCHER_FILE}: {exc}") from None
    return load_entropy_model(path), patcher


def calibrate_patcher(model: EntropyModel, data: bytes, target_mean_len: float, max_patch_len: int,
                      segment_len: int):
    """θ_g for a target mean patch length, measured on `data` with segment starts forced."""
    from neat_edge.patching import find_threshold

    return find_threshold(model.entropies(data), target_mean_len, None, max_patch_len, segment_len=segment_len)


def default_patching(cfg, data: bytes):
    """A preset's patching: the seeded (untrained) entropy model, calibrated on `data`."""
    model = build_entropy_model(EntropyConfig(segment_len=cfg.segment_len)).eval()
    return model, calibrate_patcher(model, data, cfg.target_patch_len / 10, cfg.max_patch_len, cfg.segment_len)
