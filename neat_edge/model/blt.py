"""BLT byte pipeline: local encoder (bytes -> patches) and local decoder (patches -> next bytes).

Indexing, for one segment of S bytes b_0..b_{S-1} with W context bytes carried from earlier segments:
  * the encoder runs causally over E = [context ‖ b] (W + S tokens); byte b_i sits at E index W + i
    and is pooled into its patch patch_ids[i];
  * b_i is predicted at E index W + i − 1 (it has seen bytes < i only), cross-attending to latent
    outputs of patches strictly before patch_ids[i] (index 0 of the latent list is the carried
    output of the previous segment's last patch), so causality holds across patches and segments.
"""

from __future__ import annotations

import torch
from torch import nn

from neat_edge.config import BOS, NeatConfig
from neat_edge.model.layers import MLP, Attention, RMSNorm, write_slot


class LocalBlock(nn.Module):
    """Pre-norm block: optional cross-attention, causal self-attention, MLP (SVF linears driven by
    svf_z when the config's svf_scope is "all")."""

    def __init__(self, dim: int, heads: int, cross_dim: int | None = None, svf: bool = False):
        super().__init__()
        init = "linear"  # as the plain nn.Linear these replace: the seeded init is the same either way
        self.cross = Attention(dim, heads, svf=svf, svf_init=init) if cross_dim else None
        self.norm_cross = RMSNorm(dim) if cross_dim else None
        self.norm_attn, self.attn = RMSNorm(dim), Attention(dim, heads, svf=svf, svf_init=init)
        self.norm_mlp, self.mlp = RMSNorm(dim), MLP(dim, 4, svf=svf, svf_init=init)

    def forward(self, x, pos, cross_kv=None, cross_mask=None, z=None, keep_kv: list | None = None):
        """Causal over positions pos [T]. keep_kv (a list) receives this layer's self-attention (k, v):
        a prefill fills a decode cache with them."""
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), cross_kv, cross_mask, z)
        causal = pos[:, None] >= pos[None, :]
        h = self.norm_attn(x)
        k, v = self.attn.keys_values(h, z, pos)
        if keep_kv is not None:
            keep_kv.append((k, v))
        x = x + self.attn.combine(self.attn.queries(h, z, pos), k, v, causal, z)
        return x + self.mlp(self.norm_mlp(x), z)

    def step(self, x, slot, cache_k, cache_v, cross_k=None, cross_v=None, cross_mask=None, z=None):
        """forward() for one new position per stream (incremental decoding): x [B,1,dim] at position
        slot [B] of fixed-size self-attention caches [B,H,T,Dh], which it returns with the new row
        written; it attends to cache slots <= slot, as forward's causal mask. Cross-attention reads
        precomputed keys/values (cross_mask [B,1,1,N])."""
        if self.cross is not None:
            x = x + self.cross.combine(self.cross.queries(self.norm_cross(x), z), cross_k, cross_v, cross_mask, z)
        pos = slot.to(x.dtype).unsqueeze(1)  # [B,1]
        h = self.norm_attn(x)
        k, v = self.attn.keys_values(h, z, pos)
        cache_k, cache_v = write_slot(cache_k, k, slot, 2), write_slot(cache_v, v, slot, 2)
        seen = (torch.arange(cache_k.shape[2], device=x.device) <= slot[:, None])[:, None, None, :]
        x = x + self.attn.combine(self.attn.queries(h, z, pos), cache_k, cache_v, seen, z)
        return x + self.mlp(self.norm_mlp(x), z), cache_k, cache_v


def patch_onehot(patch_ids: torch.Tensor, n_patches: int | torch.SymInt, dtype=torch.float32) -> torch.Tensor:
    """[B,S] patch index per byte -> [B,S,P] float membership matrix (static rank)."""
    ids = torch.arange(n_patches, device=patch_ids.device)
    return (patch_ids.unsqueeze(-1) == ids).to(dtype)


NGRAM_SIZES = range(3, 9)  # BLT hash n-gram embeddings, n = 3..8
NGRAM_BASE = 263  # polynomial hash base (prime > vocab); 263^7 · 260 stays far inside int64


def _bos_padded(tokens: torch.Tensor, n: int) -> torch.Tensor:
    """tokens [B, L] with n BOS in front: what the positions before the window's start read as."""
    pad = torch.full((tokens.shape[0], n), BOS, dtype=tokens.dtype, device=tokens.device)
    return torch.cat([pad, tokens], dim=1)


def ngram_hashes(tokens: torch.Tensor, buckets: int) -> list[torch.Tensor]:
    """For each n in 3..8, the bucket of the n-gram ending at every position of tokens [B, L]
    (positions before the start read as BOS). Plain int64 Mul/Add/Mod: exportable, deterministic."""
    longest = max(NGRAM_SIZES)
    padded, length = _bos_padded(tokens, longest - 1), tokens.shape[1]
    out, h = [], torch.zeros_like(tokens)
    for k in range(longest):  # h accumulates tok[j-k] · BASE^k
        start = longest - 1 - k
        h = h + padded[:, start : start + length] * (NGRAM_BASE**k)
        n = k + 1
        if n in NGRAM_SIZES:
            out.append((h + n * 1_000_003) % buckets)  # salt by n: one shared table, distinct rows per n
    return out


def previous_tokens(tokens: torch.Tensor, k: int, vocab: int) -> list[torch.Tensor]:
    """For s = 1..k, the token s positions before every position of tokens [B, L] (BOS before the start),
    offset by (s - 1) · vocab into one shared table: plain Slice/Concat/Add, exportable."""
    padded, length = _bos_padded(tokens, k), tokens.shape[1]
    return [padded[:, k - s : k - s + length] + (s - 1) * vocab for s in range(1, k + 1)]


class LocalEncoder(nn.Module):
    """Byte (+ hash n-gram, + previous-byte) embeddings, causal local layers, and pooling of each patch's bytes:
    mean pooling, refined (patch_pooling = "cross") by cross-attention from the patch query to the
    bytes of that patch only (BLT §3.2; the mask comes from patch_ids, so the rank stays static)."""

    def __init__(self, cfg: NeatConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_local)
        self.ngram_buckets = cfg.ngram_buckets
        self.ngram_embed = nn.Embedding(cfg.ngram_buckets, cfg.d_local) if cfg.ngram_buckets else None
        # Previous-byte embeddings (config previous_bytes = k): byte i's input also holds b_{i-1}..b_{i-k}, so
        # the first attention layer can match a byte's predecessor with a query's current byte — the induction
        # step of copying ("previous token" information that a plain transformer must first build with an
        # attention layer of its own). Exact bytes, not hashes: a copy needs their identity.
        self.previous_bytes = cfg.previous_bytes
        self.previous_embed = nn.Embedding(cfg.previous_bytes * cfg.vocab_size, cfg.d_local) \
            if cfg.previous_bytes else None
        svf = cfg.svf_scope == "all"
        self.layers = nn.ModuleList(LocalBlock(cfg.d_local, cfg.local_heads, svf=svf)
                                    for _ in range(cfg.encoder_layers))
        self.norm = RMSNorm(cfg.d_local)
        self.cross = Attention(cfg.d_local, cfg.local_heads, svf=svf, svf_init="linear") \
            if cfg.patch_pooling == "cross" else None
        self.norm_query = RMSNorm(cfg.d_local) if self.cross is not None else None
        self.to_patch = nn.Linear(cfg.d_local, cfg.d_model)

    def embed_tokens(self, tokens, last: torch.Tensor | None = None):
        """Embeddings of tokens [B, L] (+ their hash n-grams, which read the tokens before each one);
        with last [B] (a window index per stream) only that position's: [B, 1, d_local]."""
        x = self.embed(tokens if last is None else tokens.gather(1, last[:, None]))
        if self.ngram_embed is not None:
            for idx in ngram_hashes(tokens, self.ngram_buckets):
                x = x + self.ngram_embed(idx if last is None else idx.gather(1, last[:, None]))
        if self.previous_embed is not None:
            for idx in previous_tokens(tokens, self.previous_bytes, self.embed.num_embeddings):
                x = x + self.previous_embed(idx if last is None else idx.gather(1, last[:, None]))
        return x

    def pool(self, seg, member, z=None):
        """Patch vectors [B,P,d_model] from the normed byte hidden seg [B,S,d_local] and the membership
        member [B,S,P] (1 where byte i belongs to patch p): mean pooling, then (patch_pooling "cross")
        cross-attention from each patch to its own bytes."""
        counts = member.sum(1).clamp(min=1.0).unsqueeze(-1)
        pooled = (member.transpose(1, 2) @ seg) / counts
        if self.cross is not None:
            mask = (member.transpose(1, 2) > 0).unsqueeze(1)  # [B,1,P,S]: a patch sees its own bytes
            pooled = pooled + self.cross(self.norm_query(pooled), seg, mask, z)
        return self.to_patch(pooled)

    def forward(self, tokens, patch_ids, n_patches, z=None, keep_kv: list | None = None):
        """tokens [B, W+S] -> byte hidden [B, W+S, d_local], patches [B, P, d_model] (keep_kv: see
        LocalBlock.forward)."""
        x = self.embed_tokens(tokens)
        pos = torch.arange(tokens.shape[1], device=tokens.device, dtype=x.dtype)
        for layer in self.layers:
            x = layer(x, pos, z=z, keep_kv=keep_kv)
        if n_patches is None:  # a prefill of context only: no patches
            return x, None
        seg = self.norm(x[:, x.shape[1] - patch_ids.shape[1]:])
        return x, self.pool(seg, patch_onehot(patch_ids, n_patches, seg.dtype), z)

    def step(self, window, slot, caches, z=None):
        """One new token at window index slot [B] (window [B, W+S] already holds it): its hidden
        [B,1,d_local] (what the decoder reads), its normed hidden (what patch pooling reads) and the
        layers' caches [(k, v), ...] with its row written."""
        x = self.embed_tokens(window, slot)
        new = []
        for layer, (k, v) in zip(self.layers, caches):
            x, k, v = layer.step(x, slot, k, v, z=z)
            new.append((k, v))
        return x, self.norm(x), new


class LocalDecoder(nn.Module):
    def __init__(self, cfg: NeatConfig):
        super().__init__()
        self.from_latent = nn.Linear(cfg.d_model, cfg.d_local)
        self.layers = nn.ModuleList(LocalBlock(cfg.d_local, cfg.local_heads, cross_dim=cfg.d_local,
                                               svf=cfg.svf_scope == "all") for _ in range(cfg.decoder_layers))
        self.norm = RMSNorm(cfg.d_local)

    def cross_kv(self, latents, z=None):
        """Each layer's cross-attention keys/values [B,H,N,Dh] of latents [B,N,d_model]: a decode cache
        holds them for the latents of the segment's patches so far."""
        kv = self.from_latent(latents)
        return [layer.cross.keys_values(kv, z) for layer in self.layers]

    def step(self, x, slot, caches, cross, n_latents, z=None):
        """forward() at one position slot [B] of the segment: x [B,1,d_local] is the encoder hidden of the
        byte before it; caches [(k, v)] of self-attention, cross [(k, v)] of the latents, of which the first
        n_latents [B] (the carried latent and the patches before this byte's patch) may be read."""
        seen = (torch.arange(cross[0][0].shape[2], device=x.device) < n_latents[:, None])[:, None, None, :]
        new = []
        for layer, (k, v), (ck, cv) in zip(self.layers, caches, cross):
            x, k, v = layer.step(x, slot, k, v, ck, cv, seen, z)
            new.append((k, v))
        return self.norm(x), new

    def forward(self, byte_hidden, latents, patch_ids, z=None):
        """byte_hidden [B,S,d_local] (position i predicts byte i), latents [B,P+1,d_model]."""
        kv = self.from_latent(latents)
        latent_idx = torch.arange(latents.shape[1], device=latents.device)
        cross_mask = (latent_idx <= patch_ids.unsqueeze(-1)).unsqueeze(1)  # [B,1,S,P+1]
        pos = torch.arange(byte_hidden.shape[1], device=byte_hidden.device, dtype=byte_hidden.dtype)
        x = byte_hidden
        for layer in self.layers:
            x = layer(x, pos, kv, cross_mask, z)
        return self.norm(x)
