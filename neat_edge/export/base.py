"""The small interface every export target implements (ONNX today; Core ML and TensorRT are peers)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from neat_edge.export.spec import STATE_IN, GraphSpec
from neat_edge.model.neat import NeatModel


class ExportTarget(Protocol):
    name: str

    def build(self, model: NeatModel, spec: GraphSpec, out_dir: Path) -> dict:
        """Write the artifact(s) for `spec` into out_dir; return the manifest's graph entry
        (at least {"file": relative path, "target": name, "precision": str})."""


class StepModule(torch.nn.Module):
    """NeatModel.step as a function of flat tensors in GraphSpec order: what exporters trace."""

    def __init__(self, model: NeatModel, spec: GraphSpec):
        super().__init__()
        self.model, self.spec = model, spec
        self.state_names = [n[len(STATE_IN):] for n in spec.input_names if n.startswith(STATE_IN)]

    def forward(self, data, patch_ids, patch_mask, svf_z, *state):
        outputs, new_state = self.model.step(data, patch_ids, patch_mask, svf_z,
                                             dict(zip(self.state_names, state)))
        return (outputs["byte_logprobs"], outputs["image_logits"], outputs["dispatch_logits"],
                *(new_state[n] for n in self.state_names))


def example_inputs(model: NeatModel, spec: GraphSpec, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Representative inputs for tracing (batch 2, so the batch axis is not specialised to 1)."""
    from neat_edge.patching import segment_patches

    cfg = model.cfg
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (batch, cfg.segment_len), generator=gen)
    ids, mask = segment_patches(cfg.segment_len, cfg.patch_size)
    state = model.initial_state(batch)
    names = [n[len(STATE_IN):] for n in spec.input_names if n.startswith(STATE_IN)]
    return (data, torch.from_numpy(ids).repeat(batch, 1), torch.from_numpy(mask).repeat(batch, 1),
            model.default_svf_z(), *(state[n] for n in names))
