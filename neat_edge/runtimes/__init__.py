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
    return Session(impl, bundle.config, bundle.initial_state(), svf_z=svf_z)


def open_model_session(model, svf_z=None) -> Session:
    """A session over an in-memory PyTorch model (no bundle needed)."""
    from neat_edge.runtimes.torch import TorchBackend

    init = {k: v.numpy() for k, v in model.initial_state(1).items()}
    return Session(TorchBackend(model), model.cfg, init, svf_z=svf_z)


__all__ = ["Session", "open_session", "open_model_session", "BACKENDS"]
