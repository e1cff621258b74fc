"""The same-size plain transformer every training claim is measured against (`neat-bench train --peer`).

A Hugging Face `LlamaForCausalLM` over bytes (vocabulary 260, the project's byte + special ids), SDPA
attention, context = the NEAT training window, its width and depth chosen so that its parameter count is
within 10 % of the NEAT model's. It trains the standard way — torch.compile, bf16 autocast, fused AdamW,
clipping — through the project's own TrainStep (training/step.py) on the same sampler and bytes, so the
two rates differ only by the models.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from neat_edge.config import N_SPECIALS
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
