"""ONNX Runtime backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from neat_edge.errors import NeatError
from neat_edge.spec import GraphSpec

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "coreml": "CoreMLExecutionProvider"}


class OnnxRuntimeBackend:
    def __init__(self, graph_path: Path, spec: GraphSpec, device: str = "cpu", threads: int | None = None):
        if device not in PROVIDERS:
            raise NeatError(f"unknown ONNX Runtime device '{device}' (choose from {', '.join(PROVIDERS)})")
        provider = PROVIDERS[device]
        if provider not in ort.get_available_providers():
            raise NeatError(f"ONNX Runtime here has no {provider} (available: {', '.join(ort.get_available_providers())})")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(graph_path), opts, providers=[provider])
        except Exception as exc:  # ORT raises its own types for unreadable or invalid models
            raise NeatError(f"ONNX Runtime cannot load {graph_path}: {str(exc).splitlines()[0]}") from None
        self.name = "onnxruntime" if device == "cpu" else f"onnxruntime:{device}"
        self.spec = spec

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.spec.output_names, feeds)
        return dict(zip(self.spec.output_names, outputs))
