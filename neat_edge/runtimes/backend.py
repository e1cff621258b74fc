"""The Backend protocol: run one step of a GraphSpec on named numpy tensors. Peers: ONNX Runtime,
PyTorch (and Core ML / TensorRT with their issue). The Session never knows which one it drives."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from neat_edge.spec import GraphSpec


class Backend(Protocol):
    name: str
    spec: GraphSpec

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the step graph: feeds by spec input name -> outputs by spec output name."""
