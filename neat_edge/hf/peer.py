"""The same-size plain transformer every training claim is measured against (`neat-bench train --peer`).

A Hugging Face `LlamaForCausalLM` over bytes (vocabulary 260, the project's byte + special ids), SDPA
attention, context = the NEAT training window, its width and depth chosen so that its parameter count is
within 10 % of the NEAT model's. It trains the standard way — torch.compile, bf16 autocast, fused AdamW,
clipping — through the project's own TrainStep (training/step.py) on the same sampler and bytes, so the
two rates differ only by the models.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from neat_edge.config import BOS, N_SPECIALS
from neat_edge.errors import NeatError

VOCAB = 256 + N_SPECIALS
HEAD_DIM = 32  # nanoGPT-sized heads: 192 wide -> 6 heads
TOLERANCE = 0.10  # the peer's parameter count within ±10 % of the NEAT model's


def llama_parameters(hidden: int, layers: int, intermediate: int, vocab: int = VOCAB) -> int:
    """LlamaForCausalLM's parameter count: untied embedding and head, q/k/v/o, SwiGLU MLP, two RMSNorms a layer."""
    per_layer = 4 * hidden * hidden + 3 * hidden * intermediate + 2 * hidden
    return 2 * vocab * hidden + layers * per_layer + hidden


def peer_shape(target: int) -> dict:
    """(hidden, layers, intermediate) with a parameter count within TOLERANCE of `target`, the depth closest to
    hidden / 48 (nanoGPT's 4 × 192 at 2 M parameters; 8 × 384 at 20 M)."""
    best = None
    for hidden in range(64, 4097, HEAD_DIM):
        intermediate = max(HEAD_DIM, round(8 * hidden / 3 / HEAD_DIM) * HEAD_DIM)  # Llama's 8/3 · hidden
        for layers in range(1, 49):
            n = llama_parameters(hidden, layers, intermediate)
            if abs(n - target) > TOLERANCE * target:
                continue
            score = (abs(math.log(layers / (hidden / 48))), abs(n - target))
            if best is None or score < best[0]:
                best = (score, {"hidden": hidden, "layers": layers, "intermediate": intermediate, "parameters": n})
    if best is None:
        raise NeatError(f"no Llama shape has {target:,} parameters within {TOLERANCE:.0%}")
    return best[1]


def build_peer(target_parameters: int, context: int, seed: int = 0) -> nn.Module:
    """A freshly initialised byte-level LlamaForCausalLM of about `target_parameters` parameters."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    shape = peer_shape(target_parameters)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                      num_hidden_layers=shape["layers"], num_attention_heads=shape["hidden"] // HEAD_DIM,
                      num_key_value_heads=shape["hidden"] // HEAD_DIM, max_position_embeddings=context,
                      tie_word_embeddings=False, use_cache=False, bos_token_id=256, eos_token_id=257)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    model.peer_shape = shape
    return model


class PeerWindowLoss(nn.Module):
    """Summed -log p of every byte of windows [B, T] after the first (the causal LM loss, fp32 log-softmax);
    the signature of the NEAT WindowLoss, so one TrainStep runs both."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, windows: torch.Tensor, plan=None) -> torch.Tensor:
        logits = self.model(input_ids=windows[:, :-1]).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1),
                               reduction="sum")


@dataclass(frozen=True)
class PeerConfig:
    """What fit() and the peer's files need: the training segment (= the NEAT window) and the Llama's shape."""

    parameters: int  # the NEAT model's parameter count the peer matches
    segment_len: int  # context of a training window (the NEAT window: segments × segment_len)
    seed: int = 0
    name: str = "peer"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class PeerByteModel(nn.Module):
    """The peer as one of the project's byte models (the entropy model's interface: cfg, initial_state, step),
    so train.fit trains it with the NEAT model's loop — schedule, clipping, saves, resume, held-out evaluation.
    A segment is one context window scored from BOS (no state crosses windows: the peer has none)."""

    def __init__(self, cfg: PeerConfig):
        super().__init__()
        self.cfg = cfg
        self.llama = build_peer(cfg.parameters, cfg.segment_len + 1, cfg.seed)

    def initial_state(self, batch: int = 1) -> dict[str, torch.Tensor]:
        return {}

    def step(self, data: torch.Tensor, state: dict):
        bos = torch.full_like(data[:, :1], BOS)
        logits = self.llama(input_ids=torch.cat([bos, data[:, :-1]], dim=1)).logits
        return {"byte_logprobs": torch.log_softmax(logits.float(), dim=-1)}, state

    @torch.no_grad()
    def document_bits(self, data: bytes, stride: int | None = None, device: str = "cpu") -> float:
        """-log2 p of a document from a fresh start, its windows sliding by `stride` (default: half the
        context): every byte after the first window is predicted with at least context − stride bytes before it."""
        context = self.cfg.segment_len
        stride = stride or context // 2
        ids = torch.tensor([BOS, *data], dtype=torch.long, device=device)
        nats, done = 0.0, 0  # bytes of `data` scored so far
        start = 0
        while done < len(data):
            chunk = ids[start : start + context + 1]
            logp = torch.log_softmax(self.llama(input_ids=chunk[None, :-1]).logits[0].float(), dim=-1)
            picked = logp.gather(-1, chunk[1:, None])[:, 0]
            new = start + len(picked) - done  # the predictions of bytes not scored before
            nats -= float(picked[len(picked) - new :].sum())
            done += new
            start += stride
        return nats / math.log(2)


PEER_CONFIG, PEER_WEIGHTS = "peer_config.json", "peer.safetensors"


def save_peer(model: PeerByteModel, out_dir) -> None:
    """fit()'s save_weights for the peer: its config and weights (safetensors), landing together."""
    from safetensors.torch import save_file

    from neat_edge.fileio import atomic_write, atomic_write_json, commit_together

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with commit_together(out):
        atomic_write(out / PEER_WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
        atomic_write_json(out / PEER_CONFIG, {**model.cfg.to_dict(), "shape": model.llama.peer_shape})


def load_peer(out_dir) -> PeerByteModel:
    from safetensors.torch import load_file

    out = Path(out_dir)
    try:
        raw = json.loads((out / PEER_CONFIG).read_text())
        model = PeerByteModel(PeerConfig(**{k: raw[k] for k in ("parameters", "segment_len", "seed", "name")}))
        model.load_state_dict(load_file(str(out / PEER_WEIGHTS)))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise NeatError(f"{out} holds no readable peer checkpoint: {exc}") from None
    return model
