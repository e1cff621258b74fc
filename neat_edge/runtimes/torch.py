"""PyTorch backend: the reference, run through exactly the same Session code as every other backend."""

from __future__ import annotations

import numpy as np
import torch

from neat_edge.export.base import StepModule
from neat_edge.export.spec import GraphSpec, step_spec
from neat_edge.model.neat import NeatModel


class _TorchGraph:
    """Any flat-tensor module with a GraphSpec, behind the Backend protocol (numpy in, numpy out)."""

    name = "torch"
    spec: GraphSpec
    module: torch.nn.Module

    @torch.no_grad()
    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.spec.input_names]
        return {n: t.numpy() for n, t in zip(self.spec.output_names, self.module(*args))}


class TorchBackend(_TorchGraph):
    """The NEAT step graph (export.spec.step_spec)."""

    def __init__(self, model: NeatModel):
        self.model = model.eval()
        self.spec = step_spec(model)
        self.module = StepModule(model, self.spec).eval()


class TorchEntropyBackend(_TorchGraph):
    """The BLT entropy model (graph spec: export.spec.entropy_spec)."""

    def __init__(self, model):
        from neat_edge.export.onnx import EntropyStepModule
        from neat_edge.export.spec import entropy_spec

        self.spec = entropy_spec(model)
        self.module = EntropyStepModule(model.eval())
