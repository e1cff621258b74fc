"""MVoT on the device: interleaved text/image generation and the image-decoder graph, backend-agnostic.

Everything data-dependent lives here, outside the graphs: whether the next token opens an image (the
byte head's BOI), sampling the g·g codes from the step graph's `image_logits` (one step per code, as for
bytes), closing the image with EOI, and turning codes into pixels with the bundle's image-decoder graph
(`image_decoder.onnx` / `.mlpackage`, or the PyTorch tokenizer for the torch backend).
"""

from __future__ import annotations

import numpy as np

from neat_edge.config import BOI, EOI, EOS, IMAGE_BASE
from neat_edge.errors import NeatError
from neat_edge.runtimes.select import ARTIFACT, _open


class TorchImageDecoder:
    """The PyTorch image tokenizer's decoder behind the Backend protocol (spec: image_decoder_spec)."""

    name = "torch"

    def __init__(self, tokenizer, device: str | None = None):
        from neat_edge.model.vq import ImageDecoderGraph
        from neat_edge.spec import image_decoder_spec

        self.spec = image_decoder_spec(tokenizer.cfg)
        self.module = ImageDecoderGraph(tokenizer).eval()
        if device:
            self.module.to(device)

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        device = self.module.codebook.device
        with torch.no_grad():
            pixels = self.module(torch.from_numpy(np.ascontiguousarray(feeds["image_codes"])).to(device))
        return {"pixels": pixels.cpu().numpy()}


def image_decoder_backend(bundle, kind: str, device: str, graph: str | None = None):
    """The Backend for the bundle's image-decoder graph on the same kind of backend as the step graph
    (None when the bundle has no image tokenizer)."""
    info = bundle.manifest.get("images")
    if not info:
        return None
    if kind == "torch":
        from neat_edge.model.vq import load_tokenizer

        return TorchImageDecoder(load_tokenizer(bundle.checkpoint_dir, bundle.config), device)
    from neat_edge.spec import GraphSpec

    key = graph if kind == "onnxruntime" and graph else ARTIFACT[kind]
    entry = info["graphs"].get(key)
    if entry is None or (key == "tensorrt" and kind == "tensorrt"):
        return None  # no decoder artifact for this backend: images cannot be decoded through it
    return _open(kind, device, bundle.file(entry["file"], f"images.graphs.{key}.file"), GraphSpec.from_dict(entry),
                 entry, bundle)


def decode_image(session, codes: np.ndarray) -> np.ndarray:
    """codes [g, g] -> uint8 RGB image [H, W, 3], through the session's image-decoder backend."""
    from neat_edge.model.vq import to_uint8

    if session.image_decoder is None:
        raise NeatError("this bundle has no image decoder (export a model trained with `neat train --visual-task`)")
    g = session.config.image_grid
    out = session.image_decoder.step({"image_codes": np.asarray(codes, np.int64).reshape(1, g, g)})
    return to_uint8(out["pixels"][0])


def _sample(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    logits = logits.astype(np.float64)
    if temperature == 0.0:
        return int(np.argmax(logits))
    p = np.exp((logits - logits.max()) / temperature)
    return int(rng.choice(len(p), p=p / p.sum()))


def generate_interleaved(session, prompt, max_new_bytes: int, temperature: float = 0.0, seed: int | None = None,
                         max_images: int = 16):
    """Consume `prompt` (bytes, or int64 tokens that may hold images), then generate text and images.
    The byte head chooses among the 256 bytes, BOI (while fewer than max_images images were drawn) and
    EOS (stop); after BOI the next g·g tokens are codes sampled from the image head, then EOI is appended
    (the grid size is fixed, so nothing is left to predict there). Returns (items, codes): items is the
    interleaved list of bytes chunks and uint8 images [H, W, 3]; codes holds each image's [g, g] codes.
    max_new_bytes bounds the text bytes; images do not count towards it."""
    if max_new_bytes < 0:
        raise NeatError("max_new_bytes must be >= 0")
    if temperature < 0:
        raise NeatError("temperature must be >= 0")
    if session.patches.kind != "fixed":
        raise NeatError("visual thoughts need fixed patching (an image is fixed patches, never entropy patches)")
    if session.image_decoder is None:
        raise NeatError("this bundle has no image decoder (export a model trained with `neat train --visual-task`)")
    rng = np.random.default_rng(seed)
    g2 = session.config.image_grid ** 2
    session._append_known(prompt)
    items, codes_out, text, produced = [], [], bytearray(), 0
    while produced < max_new_bytes:
        logp = session.next_byte_logprobs()
        allowed = np.full(logp.shape, -np.inf)
        allowed[:256] = logp[:256]
        allowed[EOS] = logp[EOS]
        if len(codes_out) < max_images:
            allowed[BOI] = logp[BOI]
        token = _sample(allowed, temperature, rng)
        if token == EOS:
            session._append_known(np.array([EOS], np.int64))
            break
        if token != BOI:
            text.append(token)
            produced += 1
            session._append_known(bytes([token]))
            continue
        if text:
            items.append(bytes(text))
            text = bytearray()
        session._append_known(np.array([BOI], np.int64))
        codes = []
        for _ in range(g2):  # the image head for the grid's number of tokens
            k = _sample(session.next_image_logits(), temperature, rng)
            codes.append(k)
            session._append_known(np.array([IMAGE_BASE + k], np.int64))
        session._append_known(np.array([EOI], np.int64))
        grid = np.array(codes, np.int64).reshape(session.config.image_grid, -1)
        codes_out.append(grid)
        items.append(decode_image(session, grid))
    if text:
        items.append(bytes(text))
    return items, codes_out
