"""PyTorch backend: the reference, run through exactly the same Session code as every other backend."""

from __future__ import annotations

import numpy as np
import torch

from neat_edge.export.base import StepModule
from neat_edge.export.spec import step_spec
from neat_edge.model.neat import NeatModel


class TorchBackend:
    name = "torch"

    def __init__(self, model: NeatModel):
        self.model = model.eval()
        self.spec = step_spec(model)
        self.module = StepModule(model, self.spec).eval()

    @torch.no_grad()
    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.spec.input_names]
        outputs = self.module(*args)
        return {n: t.numpy() for n, t in zip(self.spec.output_names, outputs)}


class TorchEntropyBackend:
    """The BLT entropy model through the Backend protocol (graph spec: export.spec.entropy_spec)."""

    name = "torch"

    def __init__(self, model):
        from neat_edge.export.onnx import EntropyStepModule
        from neat_edge.export.spec import entropy_spec

        self.spec = entropy_spec(model)
        self.module = EntropyStepModule(model.eval())

    @torch.no_grad()
    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.spec.input_names]
        return {n: t.numpy() for n, t in zip(self.spec.output_names, self.module(*args))}
