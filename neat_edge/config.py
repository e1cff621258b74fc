"""NeatConfig: every size and switch of the model, with JSON round-trip, validation and presets.

A config is the model's identity: bundles, checkpoints and saved session states all carry it (or its
fingerprint), so a state from one model can never be loaded into another.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path

from neat_edge.errors import NeatError

# Byte vocabulary: 256 byte values plus a few specials (BLT keeps bytes as bytes; specials sit above).
BOS, EOS, BOI, EOI = 256, 257, 258, 259
N_SPECIALS = 4
# MVoT: inside the token stream (never in the byte head's vocabulary) image code k of the VQ
# codebook is token IMAGE_BASE + k, between a BOI and an EOI (model/mvot.py).
IMAGE_BASE = 256 + N_SPECIALS
IMAGE_DOWNSAMPLE = 8  # MVoT: one VQ code per 8x8 pixels (model/vq.py: three stride-2 convolutions)
MEMORY_ARCHS = ("mac", "mag", "mal")
# How a chunk is written into the Titans memory (model/titans.py): "titans" = Eq 13-18 (a chunk's gradients
# taken at its start, momentum), "delta" = the exact gated delta rule (Eq 32-34 with η = 0, every token sees
# the memory the tokens before it left; linear memory only, model/delta_rule.py).
MEMORY_RULES = ("titans", "delta")
# The "titans" rule's chunk step: sum (Eq 16-18 as written), mean (TTT's averaged mini-batch gradient),
# huber (Huber-capped per-token error), newton_schulz (the chunk's update orthogonalised, as in Muon / Atlas).
MEMORY_STEPS = ("sum", "mean", "huber", "newton_schulz")
SVF_SCOPES = ("latent", "all")  # where SVF linears sit: latent layers only, or local layers too


FLOAT_FIELDS = ("memory_theta_max", "memory_theta_init")
OMIT_WHEN_DEFAULT = {"memory_theta_max": 0.02, "memory_theta_init": 0.01, "memory_rule": "titans",
                     "memory_step": "sum", "memory_key_shift": 0, "previous_bytes": 0}
STRING_FIELDS = ("name", "memory_arch", "patching", "patch_pooling", "svf_scope", "memory_rule", "memory_step")


@dataclass(frozen=True)
class NeatConfig:
    name: str = "custom"
    # --- bytes and segments (BLT) ---
    segment_len: int = 128  # bytes per exported step; the session cuts the stream into segments
    patch_size: int = 4  # fixed patch length (entropy patching replaces this in the BLT issue)
    context_len: int = 32  # bytes carried across segments for the local layers (state)
    patching: str = "fixed"  # fixed (patch_size bytes) or entropy (BLT entropy patching)
    target_patch_len: int = 0  # entropy patching: wanted mean patch length x10 (45 = 4.5 bytes); 0 = n/a
    max_patch_len: int = 16  # entropy patching: longest patch
    ngram_buckets: int = 0  # hash n-gram (n = 3..8) embedding rows in the local encoder; 0 = off
    previous_bytes: int = 0  # embeddings of the k bytes before each byte, added to its own (blt.py); 0 = off
    patch_pooling: str = "mean"  # mean, or cross (cross-attention from patch queries to their bytes)
    d_local: int = 128
    local_heads: int = 4
    encoder_layers: int = 1
    decoder_layers: int = 2
    # --- latent transformer with Titans memory (MAC) ---
    d_model: int = 160
    latent_layers: int = 2
    latent_heads: int = 4
    mlp_ratio: int = 4
    memory_arch: str = "mac"  # Titans variant: mac (memory as context), mag (gate), mal (layer)
    attn_window: int = 0  # sliding-window length in patches for attention (0 = whole segment)
    persistent_tokens: int = 4  # Titans Eq 19
    memory_heads: int = 2
    memory_depth: int = 2  # L_M
    memory_expansion: int = 2  # hidden width of the memory MLP = expansion * head dim
    memory_chunks: int = 1  # memory writes per segment: chunks of max_patches_per_segment/memory_chunks patches
    # Per-token clip of the surprise gradient ‖∇_{W_l} ℓ_t‖ (0 = off). Typical tokens of trained tiny/small
    # models sit at 3-20 (head widths 80/96); unclipped outliers (> 100) drove a small model's memory to inf.
    memory_max_grad_norm: int = 32
    # θ (Eq 10/14) per unit of mean squared error: θ_t = memory_theta_max·σ(·) ≤ memory_theta_max, starting at
    # memory_theta_init. The seeds' 0.01 / 0.02 make one write recall almost nothing; a far larger bound
    # recalls spread-out keys but overshoots on correlated ones (docs/training.md, memory ablation).
    memory_theta_max: float = 0.02
    memory_theta_init: float = 0.01
    # The write rule (MEMORY_RULES) and, for "titans", its chunk step (MEMORY_STEPS); both written only when set.
    memory_rule: str = "titans"
    memory_step: str = "sum"
    # 1: the memory is initialised to store "what followed this context": its short convolution starts as
    # keys from the previous patch and values from the current one, the query projection as a copy of the
    # key projection, so a write keys patch p's value by patch p−1 and a later query from that same
    # content reads back what came after it, before any training (an init only: the layers are the same).
    memory_key_shift: int = 0
    # --- Transformer² experts and MVoT images ---
    svf_scope: str = "latent"  # SVF linears (driven by svf_z): latent (attention + MLP) or all (+ local layers)
    n_experts: int = 4  # dispatch-head outputs: the most experts the classifier can route between
    image_codebook_size: int = 256
    image_grid: int = 8  # image = grid x grid codes (MVoT: the VQ tokenizer's latent grid)
    image_code_dim: int = 16  # width of a VQ codebook vector (model/vq.py)
    # --- misc ---
    seed: int = 0

    @property
    def vocab_size(self) -> int:
        return 256 + N_SPECIALS

    @property
    def image_size(self) -> int:
        """Side of an MVoT image in pixels (image_grid codes of IMAGE_DOWNSAMPLE pixels each)."""
        return self.image_grid * IMAGE_DOWNSAMPLE

    @property
    def patches_per_segment(self) -> int:
        return -(-self.segment_len // self.patch_size)

    @property
    def max_patches_per_segment(self) -> int:
        """Most patches a segment can have: entropy patching may start one at every byte."""
        return self.segment_len if self.patching == "entropy" else self.patches_per_segment

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in STRING_FIELDS:
                if not isinstance(value, str) or not value:
                    raise NeatError(f"config field '{f.name}' must be a non-empty string")
                continue
            if f.name in FLOAT_FIELDS:
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1e6:
                    raise NeatError(f"config field '{f.name}' must be a positive number, got {value!r}")
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise NeatError(f"config field '{f.name}' must be an integer, got {value!r}")
            low = 0 if f.name in ("seed", "persistent_tokens", "encoder_layers", "attn_window", "ngram_buckets",
                                  "previous_bytes", "target_patch_len", "memory_max_grad_norm", "memory_key_shift") else 1
            if value < low:
                raise NeatError(f"config field '{f.name}' must be >= {low}, got {value}")
        if self.memory_arch not in MEMORY_ARCHS:
            raise NeatError(f"config field 'memory_arch' must be one of {', '.join(MEMORY_ARCHS)}, "
                            f"got {self.memory_arch!r}")
        for name, allowed in (("patching", ("fixed", "entropy")), ("patch_pooling", ("mean", "cross")),
                              ("svf_scope", SVF_SCOPES), ("memory_rule", MEMORY_RULES),
                              ("memory_step", MEMORY_STEPS)):
            if getattr(self, name) not in allowed:
                raise NeatError(f"config field '{name}' must be one of {', '.join(allowed)}, "
                                f"got {getattr(self, name)!r}")
        if self.patching == "entropy" and not 10 <= self.target_patch_len <= 10 * self.max_patch_len:
            raise NeatError("config field 'target_patch_len' (x10) must be in 10..10*max_patch_len "
                            "with entropy patching")
        if self.d_local % self.local_heads:
            raise NeatError("config field 'd_local' must be divisible by 'local_heads'")
        if self.d_model % self.latent_heads:
            raise NeatError("config field 'd_model' must be divisible by 'latent_heads'")
        if self.d_model % self.memory_heads:
            raise NeatError("config field 'd_model' must be divisible by 'memory_heads'")
        if not 1 <= self.memory_depth <= 4:
            raise NeatError(f"config field 'memory_depth' must be in 1..4, got {self.memory_depth}")
        if self.memory_key_shift not in (0, 1):
            raise NeatError(f"config field 'memory_key_shift' must be 0 or 1, got {self.memory_key_shift}")
        if self.memory_theta_init >= self.memory_theta_max:
            raise NeatError("config field 'memory_theta_init' must be below 'memory_theta_max'")
        if self.memory_rule == "delta":
            if self.memory_depth != 1:
                raise NeatError(f"config field 'memory_rule' 'delta' needs a linear memory: set 'memory_depth' to 1 "
                                f"(got {self.memory_depth})")
            changed = [k for k in ("memory_theta_max", "memory_theta_init", "memory_step")
                       if getattr(self, k) != OMIT_WHEN_DEFAULT[k]]
            if changed:
                raise NeatError(f"config field '{changed[0]}' applies to memory_rule 'titans' only (the delta rule's "
                                "step is β_t = σ(·) ≤ 1, exact per token)")
        if self.segment_len % self.patch_size:
            raise NeatError("config field 'segment_len' must be a multiple of 'patch_size'")

    # --- JSON round trip ---
    def to_dict(self) -> dict:
        # Fields added after checkpoints shipped are written only when set, so the JSON (and with it the
        # fingerprint and the experts' base id) of every earlier model stays what it was.
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in OMIT_WHEN_DEFAULT or v != OMIT_WHEN_DEFAULT[k]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> NeatConfig:
        if not isinstance(data, dict):
            raise NeatError("config must be a JSON object")
        known = {f.name for f in fields(cls)}
        if data.get("model_type") == "neat":  # written by neat_edge.hf's save_pretrained, for AutoConfig; not a field
            data = {k: v for k, v in data.items() if k != "model_type"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise NeatError(f"unknown config field '{unknown[0]}'")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> NeatConfig:
        from neat_edge.bounded import loads_json  # strict: depth-bounded, no key twice, finite numbers

        return cls.from_dict(loads_json(text, "config"))

    @classmethod
    def load(cls, path: str | Path) -> NeatConfig:
        from neat_edge.bounded import read_head

        return cls.from_json(read_head(Path(path), "config", 1 << 20, whole=True))  # a config is ~1 KB

    def fingerprint(self) -> str:
        """Short hash of the architecture (not the weights): states and bundles are checked against it."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


# Presets use fixed 4-byte patches so that training one needs no entropy model. Entropy patching
# (patching="entropy", patch_pooling="cross") is opt-in; at equal budget it matched 1-byte patches
# (2.311 vs 2.320 held-out bits/byte at mean patch 4.6) and beat fixed 4-byte patches (2.340).
PRESETS: dict[str, NeatConfig] = {
    # < 2 M parameters: the test suite's model and the bundled default.
    # SVF in the local layers too: the experts' z then reaches the byte-level layers, where a domain
    # shows most (held-out Python, from the same base: 0.06 % better bits/byte with latent-only z, 0.5 % with all).
    # MVoT: a 4x4 grid of codes, one per FrozenLake cell (training/visual_task.py), so a visual step of the
    # grid task costs 16 image tokens.
    "tiny": NeatConfig(name="tiny", svf_scope="all", image_grid=4),
    # ~20 M parameters.
    "small": NeatConfig(
        name="small", segment_len=256, context_len=64, d_local=256, encoder_layers=2, decoder_layers=3,
        d_model=384, latent_layers=6, latent_heads=6, memory_heads=4, n_experts=8, image_codebook_size=512,
    ),
    # ~120 M parameters.
    "base": NeatConfig(
        name="base", segment_len=512, context_len=128, d_local=384, local_heads=6, encoder_layers=2,
        decoder_layers=4, d_model=768, latent_layers=10, latent_heads=12, memory_heads=6, n_experts=8,
        image_codebook_size=1024, persistent_tokens=8,
    ),
}


def preset(name: str) -> NeatConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise NeatError(f"unknown preset '{name}' (choose from {', '.join(PRESETS)})") from None
