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
        self.device = "cuda" if device == "cuda" else "cpu"  # where step_native keeps what it returns
        self._io, self._bound = None, {}  # step_native's IO binding, and the value each input is bound to

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.spec.output_names, feeds)
        return dict(zip(self.spec.output_names, outputs))

    def step_native(self, feeds: dict, keep) -> dict:
        """step() through IO binding: inputs may be OrtValues (a previous step's outputs, never copied),
        and the outputs named in `keep` come back as OrtValues on the backend's device (decode caches:
        passed to the next step as they are) instead of numpy copies. The rest come back as numpy."""
        if self._io is None:
            self._io, self._bound = self.session.io_binding(), {}
        io, bound = self._io, self._bound
        for name in self.spec.input_names:  # an input still bound to the same value is left as it is (the
            fed = feeds[name]  # SVF weights, the caches a step does not change): a decode step rebinds a few
            if bound.get(name, (None,))[0] is fed:
                continue
            if isinstance(fed, ort.OrtValue):
                io.bind_ortvalue_input(name, fed)
                bound[name] = (fed,)
            else:
                value = np.ascontiguousarray(fed)
                io.bind_cpu_input(name, value)
                bound[name] = (fed, value)  # both held: ORT reads `value`, `fed` keeps its id unique
        for name in self.spec.output_names:  # new outputs every run: no step writes into what it reads
            io.bind_output(name, self.device)
        self.session.run_with_iobinding(io)
        return {name: value if name in keep else value.numpy()
                for name, value in zip(self.spec.output_names, io.get_outputs())}
