"""MVoT (Multimodal Visualization-of-Thought): image tokens in the byte stream.

Stream layout: text bytes ... BOI, c_1 .. c_{g·g}, EOI, text bytes ...  where c_j = IMAGE_BASE + k_j and
k_j is a code of the VQ tokenizer (model/vq.py), row-major over its g x g grid.

  * in:  StreamEmbedding embeds a byte / special from its table and an image token from its VQ code
         vector e^k (a frozen copy of the tokenizer's codebook) through a learned projection; with fixed
         patches an image is g·g/patch_size ordinary patches (no entropy patching inside an image);
  * out: the step graph returns, at every position, byte log-probs (byte head) and image-code logits
         (ImageHead). Which one is read is data-dependent, so the session decides (runtimes/images.py):
         after BOI the next g·g positions are sampled from the image head, then EOI follows;
  * loss (training/mvot.py): L = L_CE + λ·L_D, with L_D the token discrepancy loss (MVoT §3.2).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from neat_edge.config import IMAGE_BASE, NeatConfig

# Tensors a checkpoint made before images entered the stream lacks: they keep their seeded init
# (and an all-zero codebook) until a visual-task run fills them in.
IMAGE_EMBED_KEYS = ("encoder.embed.image_codebook", "encoder.embed.image_proj.weight",
                    "encoder.embed.image_proj.bias")


class ImageHead(nn.Module):
    """Per position, logits over the VQ codebook (the visual-thought token distribution P(t_i))."""

    def __init__(self, dim: int, codebook_size: int):
        super().__init__()
        self.proj = nn.Linear(dim, codebook_size)

    def forward(self, hidden):
        return self.proj(hidden)


class StreamEmbedding(nn.Embedding):
    """The local encoder's token embedding for the whole stream. Still an nn.Embedding over bytes and
    specials (same weight, same checkpoint key); image tokens IMAGE_BASE + k read e^k from the frozen
    codebook copy and project it to the local width. Export-friendly: where + two gathers on int64 (no
    integer Clip, which TensorRT lacks)."""

    def __init__(self, cfg: NeatConfig):
        super().__init__(cfg.vocab_size, cfg.d_local)
        self.register_buffer("image_codebook", torch.zeros(cfg.image_codebook_size, cfg.image_code_dim))
        self.image_proj = nn.Linear(cfg.image_code_dim, cfg.d_local)

    @classmethod
    def from_embedding(cls, table: nn.Embedding, cfg: NeatConfig) -> StreamEmbedding:
        emb = cls(cfg)
        emb.weight = table.weight  # the byte table keeps its init (and its key)
        return emb

    def forward(self, tokens):
        is_image = tokens >= IMAGE_BASE
        zero = torch.zeros_like(tokens)
        text = F.embedding(torch.where(is_image, zero, tokens), self.weight)
        codes = torch.where(is_image, tokens - IMAGE_BASE, zero)
        image = self.image_proj(F.embedding(codes, self.image_codebook))
        return torch.where(is_image.unsqueeze(-1), image, text)


def code_discrepancy(codebook: torch.Tensor) -> torch.Tensor:
    """[K, K] matrix S with S[j, k] = MSE(e^j, e^k): row j is S_{t_vis} for ground-truth code j."""
    diff = codebook.unsqueeze(1) - codebook.unsqueeze(0)
    return diff.pow(2).mean(-1)


def token_discrepancy_loss(image_logits: torch.Tensor, target_codes: torch.Tensor,
                           discrepancy: torch.Tensor) -> torch.Tensor:
    """MVoT token discrepancy loss L_D = Σ_i S_{t_vis^i} · P(t_i): for every image position i, the
    predicted distribution over codes P(t_i) = softmax(logits_i) weighted by the MSE of the ground-truth
    code's embedding to every codebook embedding (S = code_discrepancy(codebook)). A sum over positions."""
    probs = torch.softmax(image_logits.float(), dim=-1)
    return (discrepancy[target_codes] * probs).sum()


def mvot_segment_loss(byte_logprobs, image_logits, targets, discrepancy=None) -> dict[str, torch.Tensor]:
    """Sums over one segment of mixed targets [B,S] (bytes/specials < IMAGE_BASE, image tokens above):
    text_nll (byte head), image_nll (image head, cross-entropy over codes), token_discrepancy (L_D, when
    `discrepancy` is given), plus counts and correct image-code argmaxes for accuracy."""
    is_image = targets >= IMAGE_BASE
    text_t = targets.clamp(max=IMAGE_BASE - 1).unsqueeze(-1)
    text_nll = -(byte_logprobs.float().gather(-1, text_t).squeeze(-1) * (~is_image)).sum()
    codes = (targets - IMAGE_BASE).clamp(min=0, max=image_logits.shape[-1] - 1)
    image_logp = torch.log_softmax(image_logits.float(), dim=-1)
    image_nll = -(image_logp.gather(-1, codes.unsqueeze(-1)).squeeze(-1) * is_image).sum()
    out = {"text_nll": text_nll, "image_nll": image_nll, "text_count": (~is_image).sum(),
           "image_count": is_image.sum(), "image_correct": ((image_logits.argmax(-1) == codes) & is_image).sum()}
    if discrepancy is not None:
        out["token_discrepancy"] = token_discrepancy_loss(image_logits[is_image], codes[is_image], discrepancy)
    return out
