"""Runtimes: one Session API over every backend (ONNX Runtime, PyTorch; Core ML / TensorRT later)."""

from __future__ import annotations

from pathlib import Path

from neat_edge.errors import NeatError
from neat_edge.runtimes.session import Session

BACKENDS = ("onnxruntime", "torch")


def open_session(bundle_dir: str | Path, backend: str = "onnxruntime", svf_z=None) -> Session:
    """Open a stateful session on a bundle. backend: "onnxruntime" (or "onnxruntime:cpu|cuda|coreml")
    or "torch" (the bundle's PyTorch checkpoint through the same session code)."""
    from neat_edge.export.bundle import open_bundle

    kind, _, device = backend.partition(":")
    if kind not in BACKENDS:
        raise NeatError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
    bundle = open_bundle(bundle_dir)
    if kind == "onnxruntime":
        from neat_edge.runtimes.onnxruntime import OnnxRuntimeBackend

        path, spec = bundle.graph("onnx")
        impl = OnnxRuntimeBackend(path, spec, device or "cpu")
    else:
        if device:
            raise NeatError(f"backend 'torch' takes no device suffix (got '{backend}')")
        from neat_edge.model.checkpoint import load_checkpoint
        from neat_edge.runtimes.torch import TorchBackend

        impl = TorchBackend(load_checkpoint(bundle.checkpoint_dir))
    return Session(impl, bundle.config, bundle.initial_state(), svf_z=svf_z,
                   patches=_bundle_patches(bundle, kind, device or "cpu"))


def _bundle_patches(bundle, kind: str, device: str):
    """The session's patch source for a bundle: fixed, or the entropy graph on the same backend kind."""
    from neat_edge.runtimes.patches import EntropyPatches, FixedPatches

    info = bundle.patching
    if info["kind"] == "fixed":
        return FixedPatches(info["patch_size"])
    import numpy as np

    from neat_edge.config import BOS
    from neat_edge.export.spec import GraphSpec
    from neat_edge.patching import EntropyPatcher

    patcher = EntropyPatcher(info["threshold"], info["relative_threshold"], info["max_patch_len"])
    if kind == "onnxruntime":
        from neat_edge.runtimes.onnxruntime import OnnxRuntimeBackend

        entry = info["graphs"]["onnx"]
        backend = OnnxRuntimeBackend(bundle.path / entry["file"], GraphSpec.from_dict(entry), device)
    else:
        from neat_edge.model.entropy import load_entropy_model
        from neat_edge.runtimes.torch import TorchEntropyBackend

        backend = TorchEntropyBackend(load_entropy_model(bundle.checkpoint_dir))
    return EntropyPatches(backend, np.full((1, info["entropy_context_len"]), BOS, np.int64), patcher)


def open_model_session(model, svf_z=None, patching=None) -> Session:
    """A session over an in-memory PyTorch model (no bundle needed); patching = (entropy model,
    EntropyPatcher) for a model that uses entropy patching."""
    from neat_edge.runtimes.patches import EntropyPatches
    from neat_edge.runtimes.torch import TorchBackend, TorchEntropyBackend

    patches = None
    if model.cfg.patching == "entropy":
        if patching is None:
            raise NeatError("this model uses entropy patching: pass patching=(entropy_model, patcher)")
        entropy_model, patcher = patching
        context = entropy_model.initial_state(1)["byte_context"].cpu().numpy()
        patches = EntropyPatches(TorchEntropyBackend(entropy_model), context, patcher)
    init = {k: v.numpy() for k, v in model.initial_state(1).items()}
    return Session(TorchBackend(model), model.cfg, init, svf_z=svf_z, patches=patches)


__all__ = ["Session", "open_session", "open_model_session", "BACKENDS"]
