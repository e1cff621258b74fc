"""MVoT image tokenizer: a small VQ-VAE whose codes are the model's image tokens.

    image [B, 3, H, W] in [0, 1] ─► conv encoder (÷8) ─► [B, g·g, D] ─► VectorQuantize ─► codes [B, g, g]
    codes ─► codebook lookup ─► conv decoder (×8) ─► pixels [B, H, W, 3] in [0, 1]

g = cfg.image_grid, K = cfg.image_codebook_size codes of width D = cfg.image_code_dim, H = W = 8·g.
The quantizer is vector-quantize-pytorch's VectorQuantize (EMA codebook, k-means init, dead-code
restarts), used the way its README does. The decoder half is exported as its own graph of the bundle
(`image_decoder.onnx` / `.mlpackage`): codes in, pixels out, no state. The same codebook is copied into
the NEAT model (model/mvot.py), which embeds image tokens from it and measures the token discrepancy
loss against it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from vector_quantize_pytorch import VectorQuantize

from neat_edge.config import IMAGE_DOWNSAMPLE, NeatConfig
from neat_edge.errors import NeatError
from neat_edge.fileio import atomic_write

DOWNSAMPLE = IMAGE_DOWNSAMPLE  # three stride-2 convolutions: one code per 8x8 pixels
HIDDEN = 64
VQ_FILE = "vq.safetensors"


def image_size(cfg: NeatConfig) -> int:
    return cfg.image_size


class ImageTokenizer(nn.Module):
    def __init__(self, cfg: NeatConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.image_code_dim
        # Kernel = stride: every code sees exactly its own 8x8 pixels, and decodes to exactly them, so a
        # grid cell's codes do not depend on its neighbours (a moved agent changes only its cells' codes).
        self.encoder = nn.Sequential(
            nn.Conv2d(3, HIDDEN // 2, 2, 2), nn.ReLU(), nn.Conv2d(HIDDEN // 2, HIDDEN, 2, 2), nn.ReLU(),
            nn.Conv2d(HIDDEN, HIDDEN, 2, 2), nn.ReLU(), nn.Conv2d(HIDDEN, d, 1))
        self.quantizer = VectorQuantize(dim=d, codebook_size=cfg.image_codebook_size, decay=0.8,
                                        commitment_weight=0.25, kmeans_init=True, threshold_ema_dead_code=2)
        self.decoder = nn.Sequential(
            nn.Conv2d(d, HIDDEN, 1), nn.ReLU(), nn.ConvTranspose2d(HIDDEN, HIDDEN, 2, 2), nn.ReLU(),
            nn.ConvTranspose2d(HIDDEN, HIDDEN // 2, 2, 2), nn.ReLU(), nn.ConvTranspose2d(HIDDEN // 2, 3, 2, 2))

    @property
    def codebook(self) -> torch.Tensor:
        """[K, D] code vectors e^k_vis (MVoT §3.2)."""
        return self.quantizer.codebook

    def forward(self, images: torch.Tensor):
        """images [B,3,H,W] -> (reconstruction [B,3,H,W], codes [B,g,g], commitment loss)."""
        z = self.encoder(images)
        b, d, g, _ = z.shape
        quantized, codes, commit = self.quantizer(z.flatten(2).transpose(1, 2))
        recon = torch.sigmoid(self.decoder(quantized.transpose(1, 2).reshape(b, d, g, g)))
        return recon, codes.view(b, g, g), commit

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B,3,H,W] in [0,1] -> codes [B,g,g] (int64)."""
        return self(images)[1]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B,g,g] -> pixels [B,H,W,3] in [0,1] (channel-last, like a numpy/PIL image)."""
        emb = nn.functional.embedding(codes, self.codebook)  # [B,g,g,D]
        return torch.sigmoid(self.decoder(emb.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)


class ImageDecoderGraph(nn.Module):
    """What the bundle's image-decoder graph computes: codes -> pixels, with the codebook frozen in."""

    def __init__(self, tokenizer: ImageTokenizer):
        super().__init__()
        self.register_buffer("codebook", tokenizer.codebook.detach().clone())
        self.decoder = tokenizer.decoder

    def forward(self, image_codes):
        emb = nn.functional.embedding(image_codes, self.codebook)
        return torch.sigmoid(self.decoder(emb.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)


def attach_tokenizer(model, tok: ImageTokenizer) -> None:
    """Keep the image tokenizer with a NEAT model without making it a submodule: its weights live in
    vq.safetensors, never in the model's state dict (nn.Module would register it on assignment)."""
    model.__dict__["image_tokenizer"] = tok


def tokenizer_for(model) -> ImageTokenizer | None:
    """The image tokenizer that goes with a NEAT model: attached to it (attach_tokenizer) or saved
    beside the checkpoint it was loaded from; None when it has none."""
    tok = model.__dict__.get("image_tokenizer")
    source = getattr(model, "source_dir", None)
    if tok is None and source is not None and has_tokenizer(source):
        tok = load_tokenizer(source, model.cfg)
        attach_tokenizer(model, tok)
    return tok


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,H,W,3] -> float [N,3,H,W] in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """float [.., H, W, 3] in [0,1] -> uint8 (what a PNG holds)."""
    return np.clip(np.rint(np.asarray(pixels, np.float32) * 255.0), 0, 255).astype(np.uint8)


def build_tokenizer(cfg: NeatConfig) -> ImageTokenizer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 7)
        return ImageTokenizer(cfg)


def train_tokenizer(cfg: NeatConfig, images: np.ndarray, steps: int = 400, batch: int = 64, lr: float = 2e-3,
                    seed: int = 0) -> tuple[ImageTokenizer, dict]:
    """Fit the VQ-VAE on uint8 images [N,H,W,3]: pixel MSE + VectorQuantize's commitment loss
    (its EMA updates the codebook). Returns the tokenizer (eval mode) and its measurements."""
    size = image_size(cfg)
    if images.shape[1:] != (size, size, 3):
        raise NeatError(f"the image tokenizer needs {size}x{size} RGB images, got {images.shape[1:]}")
    tok = build_tokenizer(cfg).train()
    data = to_tensor(images)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for n, p in tok.named_parameters() if not n.startswith("quantizer.")], lr=lr)
    with torch.random.fork_rng(devices=[]):  # VectorQuantize's k-means init and dead-code restarts draw
        torch.manual_seed(seed)  # from the global RNG: seeded here, so the same seed gives the same codebook
        for _ in range(steps):
            x = data[torch.randint(0, len(data), (min(batch, len(data)),), generator=gen)]
            recon, _, commit = tok(x)
            loss = nn.functional.mse_loss(recon, x) + commit.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    tok.eval()
    with torch.no_grad():
        codes = tok.encode(data)
        mse = float(nn.functional.mse_loss(tok.decode(codes), data.permute(0, 2, 3, 1)))
    return tok, {"steps": steps, "images": len(images), "pixel_mse": mse,
                 "codes_used": int(torch.unique(codes).numel())}


def save_tokenizer(tok: ImageTokenizer, out_dir: str | Path, extra: dict | None = None) -> Path:
    path = Path(out_dir) / VQ_FILE
    tensors = {k: v.detach().cpu().contiguous() for k, v in tok.state_dict().items()}
    meta = {"format": "neat-vq", "fingerprint": tok.cfg.fingerprint(),
            **{k: str(v) for k, v in (extra or {}).items()}}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return path


def has_tokenizer(path: str | Path) -> bool:
    return (Path(path) / VQ_FILE).is_file()


def load_tokenizer(path: str | Path, cfg: NeatConfig) -> ImageTokenizer:
    """The image tokenizer saved in checkpoint directory `path` (VQ_FILE), for the model config cfg."""
    file = Path(path) / VQ_FILE
    if not file.is_file():
        raise NeatError(f"{path} has no image tokenizer ({VQ_FILE}); train one with `neat train --visual-task`")
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise NeatError(f"corrupted image tokenizer {file}: {exc}") from None
    tok = build_tokenizer(cfg)
    own = tok.state_dict()
    bad = sorted(set(own) ^ set(tensors)) or [k for k in own if own[k].shape != tensors[k].shape]
    if bad:
        raise NeatError(f"image tokenizer {file} does not match the model config (tensor '{bad[0]}')")
    tok.load_state_dict(tensors)
    return tok.eval()
