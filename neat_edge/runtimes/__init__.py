"""Runtimes: one Session API over every backend (ONNX Runtime, PyTorch, Core ML, TensorRT)."""

from __future__ import annotations

from pathlib import Path

from neat_edge.errors import NeatError
from neat_edge.runtimes.select import BACKENDS  # onnxruntime, torch, coreml, tensorrt
from neat_edge.runtimes.session import Session


def open_session(bundle_dir: str | Path, backend: str = "onnxruntime", svf_z=None, graph: str | None = None,
                 threads: int | None = None) -> Session:
    """Open a stateful session on a bundle. backend: "onnxruntime" (or "onnxruntime:cpu|cuda|coreml"),
    "torch" / "torch:cuda" (the bundle's PyTorch checkpoint through the same session code), "coreml"
    (or "coreml:cpu|gpu|ane", macOS) or "tensorrt" (the bundle's TensorRT engine, NVIDIA GPU).
    graph="tensorrt" with an onnxruntime backend runs the bundle's TensorRT-ready ONNX instead.
    threads: ONNX Runtime's intra-op threads for every graph of the session (default: its own choice)."""
    from neat_edge.bundle import open_bundle
    from neat_edge.runtimes.select import parse_backend, step_backend
    from neat_edge.runtimes.validation import check_open

    check_open(bundle_dir, backend, graph, threads)
    kind, device = parse_backend(backend)
    bundle = open_bundle(bundle_dir)
    impl = step_backend(bundle, kind, device, graph, threads)
    patches = _bundle_patches(bundle, kind, device, graph, threads)
    session = Session(impl, bundle.config, bundle.initial_state(impl.spec), svf_z=svf_z, patches=patches,
                      decode=lambda: decode_backends(bundle, kind, device, graph, impl, patches, threads))
    from neat_edge.experts import library_for_bundle

    session.experts = library_for_bundle(bundle)  # experts/ is read now: a file copied in is found
    from neat_edge.runtimes.images import image_decoder_backend

    session.image_decoder = image_decoder_backend(bundle, kind, device, graph)  # MVoT: codes -> pixels
    return session


def decode_backends(bundle, kind: str, device: str, graph: str | None, step, patches, threads: int | None = None):
    """The bundle's decode graphs on this backend kind (runtimes/decoding.py), or None when the bundle
    has none for it (generation then re-runs the step graph per byte). torch: from the model the step
    backend already holds."""
    if kind == "torch":
        from neat_edge.runtimes.torch import torch_decode_graphs

        entropy = getattr(getattr(patches, "backend", None), "module", None)
        return torch_decode_graphs(step.model, entropy.model if entropy is not None else None, step.name)
    from neat_edge.runtimes.select import decode_graphs

    return decode_graphs(bundle, kind, device, graph, threads)


def _bundle_patches(bundle, kind: str, device: str, graph: str | None = None, threads: int | None = None):
    """The session's patch source for a bundle: fixed, or the entropy graph on the same backend kind."""
    from neat_edge.runtimes.patches import EntropyPatches, FixedPatches

    info = bundle.patching
    if info["kind"] == "fixed":
        return FixedPatches(info["patch_size"])
    import numpy as np

    from neat_edge.config import BOS
    from neat_edge.patching import EntropyPatcher
    from neat_edge.runtimes.select import entropy_backend

    patcher = EntropyPatcher(info["threshold"], info["relative_threshold"], info["max_patch_len"])
    backend = entropy_backend(bundle, kind, device, graph, threads)
    return EntropyPatches(backend, np.full((1, info["entropy_context_len"]), BOS, np.int64), patcher)


def open_model_session(model, svf_z=None, patching=None, experts_dir=None) -> Session:
    """A session over an in-memory PyTorch model (no bundle needed); patching = (entropy model,
    EntropyPatcher) for a model that uses entropy patching; experts_dir = its expert library
    (default: experts/ of the checkpoint it was loaded from)."""
    from neat_edge.runtimes.patches import EntropyPatches
    from neat_edge.runtimes.torch import TorchBackend, TorchEntropyBackend

    patches = None
    if model.cfg.patching == "entropy":
        if patching is None:
            raise NeatError("this model uses entropy patching: pass patching=(entropy_model, patcher)")
        entropy_model, patcher = patching
        context = entropy_model.initial_state(1)["byte_context"].cpu().numpy()
        patches = EntropyPatches(TorchEntropyBackend(entropy_model), context, patcher)
    init = {k: v.cpu().numpy() for k, v in model.initial_state(1).items()}
    from neat_edge.runtimes.torch import torch_decode_graphs

    decode = torch_decode_graphs(model, patching[0] if patches is not None else None)
    session = Session(TorchBackend(model), model.cfg, init, svf_z=svf_z, patches=patches, decode=decode)
    from neat_edge.experts import library_for_model

    session.experts = library_for_model(model, experts_dir)
    from neat_edge.model.vq import tokenizer_for
    from neat_edge.runtimes.images import TorchImageDecoder

    tok = tokenizer_for(model)
    session.image_decoder = TorchImageDecoder(tok) if tok is not None else None
    return session


__all__ = ["Session", "open_session", "open_model_session", "BACKENDS"]
