"""NeatModel: one *step* over one segment of bytes, with every piece of state in and out.

    step(bytes [B,S], patch_ids [B,S], patch_mask [B,P], svf_z [R], state) -> (outputs, new state)

bytes ─► LocalEncoder (causal, over carried context ‖ segment) ─► patch pooling
      ─► LatentTransformer (MAC layers with Titans memory, SVF linears) ─► LocalDecoder
      ─► byte log-probs [B,S,V], image-token logits [B,S,K], dispatch logits [B,E]

State (all explicit tensors, so the exported graph is a pure function):
  byte_context           [B, W] int64   last W bytes seen (BOS-filled in a fresh stream)
  latent_carry           [B, D]         latent output of the previous segment's last patch
  memory.{i}.weight.{l}  [B, H, o, in]  Titans memory MLP weights of latent layer i, MLP layer l
  memory.{i}.momentum.{l}               its momentum S (Eq 14)
  memory.{i}.conv_in     [B, K-1, 3D]   short-convolution history of the memory projections
  memory.{i}.conv_out                   (MAC only) the same for the projections of the attention output
  window.{i}.rows        [B, A, D]      (MAG/MAL with attn_window A) attention key rows of the last A patches
  window.{i}.valid       [B, A]         1 where such a patch exists (a fresh stream has none)
"""

from __future__ import annotations

import torch
from torch import nn

from neat_edge.config import BOS, NeatConfig
from neat_edge.model.blt import LocalDecoder, LocalEncoder
from neat_edge.model.latent import LatentTransformer
from neat_edge.model.mvot import ImageHead, StreamEmbedding
from neat_edge.model.svf import assign_svf_offsets, svf_layers


class NeatModel(nn.Module):
    def __init__(self, cfg: NeatConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = LocalEncoder(cfg)
        self.latent = LatentTransformer(cfg)
        self.latent_start = nn.Parameter(torch.zeros(cfg.d_model))
        self.decoder = LocalDecoder(cfg)
        self.byte_head = nn.Linear(cfg.d_local, cfg.vocab_size)
        self.image_head = ImageHead(cfg.d_local, cfg.image_codebook_size)
        self.dispatch_head = nn.Linear(cfg.d_model, cfg.n_experts)
        # MVoT: image tokens (IMAGE_BASE + code) enter the stream embedded from the VQ codebook.
        self.encoder.embed = StreamEmbedding.from_embedding(self.encoder.embed, cfg)
        assign_svf_offsets(self)

    @torch.no_grad()
    def set_image_codebook(self, codebook: torch.Tensor) -> None:
        """Copy the image tokenizer's codebook [K, D] in (model/vq.py): the embedding of image tokens."""
        self.encoder.embed.image_codebook.copy_(codebook)

    @property
    def image_codebook(self) -> torch.Tensor:
        return self.encoder.embed.image_codebook

    # --- state -----------------------------------------------------------------------------------
    @property
    def svf_rank(self) -> int:
        return sum(layer.rank for _, layer in svf_layers(self))

    def state_shapes(self) -> dict[str, tuple]:
        """Every state tensor's shape after the batch axis, in graph order."""
        cfg = self.cfg
        shapes = {"byte_context": (cfg.context_len,), "latent_carry": (cfg.d_model,)}
        for i, layer in enumerate(self.latent.layers):
            shapes.update({layer_state_name(i, k): v for k, v in layer.state_shapes().items()})
        return shapes

    def state_names(self) -> list[str]:
        return list(self.state_shapes())

    def initial_state_trainable(self, batch: int) -> dict[str, torch.Tensor]:
        """The state of a fresh stream, keeping the graph to M_0 and latent_start (for training)."""
        state = {
            "byte_context": torch.full((batch, self.cfg.context_len), BOS, dtype=torch.long,
                                       device=self.latent_start.device),
            "latent_carry": self.latent_start.unsqueeze(0).expand(batch, -1),
        }
        for i, layer in enumerate(self.latent.layers):
            state.update({layer_state_name(i, k): v for k, v in layer.init_state(batch).items()})
        return state

    @torch.no_grad()
    def initial_state(self, batch: int = 1) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.initial_state_trainable(batch).items()}

    def layer_states(self, state):
        """The model state split per latent layer, under the layer's own names (layer_state_name)."""
        return [{k: state[layer_state_name(i, k)] for k in layer.state_shapes()}
                for i, layer in enumerate(self.latent.layers)]

    # --- one step --------------------------------------------------------------------------------
    def step(self, data, patch_ids, patch_mask, svf_z, state):
        context = state["byte_context"]
        w = context.shape[1]
        tokens = torch.cat([context, data], dim=1)
        hidden, patches = self.encoder(tokens, patch_ids, patch_mask.shape[1], svf_z)
        latents, layer_states = self.latent(patches, patch_mask, self.layer_states(state), svf_z)

        carry = state["latent_carry"].unsqueeze(1)
        byte_hidden = hidden[:, w - 1 : hidden.shape[1] - 1]  # position i predicts byte i
        dec = self.decoder(byte_hidden, torch.cat([carry, latents], dim=1), patch_ids, svf_z)

        n_valid = patch_mask.sum(-1, keepdim=True)
        last = (torch.arange(patch_mask.shape[1], device=data.device) == (n_valid - 1)).to(latents.dtype)
        outputs = {
            "byte_logprobs": torch.log_softmax(self.byte_head(dec), dim=-1),
            "image_logits": self.image_head(dec),
            "dispatch_logits": self.dispatch_head(self.dispatch_input(patches, patch_mask)),
        }
        new_state = {
            "byte_context": tokens[:, tokens.shape[1] - w:],
            "latent_carry": (last.unsqueeze(-1) * latents).sum(1),
        }
        for i, layer_state in enumerate(layer_states):
            new_state.update({layer_state_name(i, k): v for k, v in layer_state.items()})
        return outputs, new_state

    @staticmethod
    def dispatch_input(patches, patch_mask):
        """What the dispatch head reads (Transformer² pass 1): the mean patch embedding of the local
        encoder over the segment's real patches. In a linear probe on held-out prose vs Python windows it
        told the domains apart better than the mean final latent (91 / 90 % vs 92 / 85 % of 256-byte
        windows), and it needs neither the memory nor the latent layers."""
        return (patches * patch_mask.unsqueeze(-1)).sum(1) / patch_mask.sum(-1, keepdim=True).clamp(min=1.0)

    def default_svf_z(self) -> torch.Tensor:
        return torch.ones(self.svf_rank, device=self.latent_start.device)


def layer_state_name(layer: int, name: str) -> str:
    """A latent layer's state tensor in the model state: the Titans memory (weights, momentum, convolution
    histories) under memory.{layer}., the carried attention window (MAG/MAL) under window.{layer}. —
    short-term context, which the memory ablation (Session.reset_memory) keeps."""
    if name.startswith("window_"):
        return f"window.{layer}.{name[len('window_'):]}"
    return f"memory.{layer}.{name}"


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, counting an SVF-converted layer as the dense weight it stands for."""
    dense_equivalent = sum(layer.in_features * layer.out_features for _, layer in svf_layers(model)
                           if layer.is_svf)
    return sum(p.numel() for p in model.parameters()) + dense_equivalent
