"""The model's graphs as modules over flat tensors in GraphSpec order (neat_edge/spec.py): what exporters
trace and what the PyTorch backend runs, so both see exactly the same function."""

from __future__ import annotations

import torch

from neat_edge.model.neat import NeatModel
from neat_edge.spec import STATE_IN, GraphSpec


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


class EntropyStepModule(torch.nn.Module):
    """The BLT entropy model's step over flat tensors (spec: spec.entropy_spec)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, data, byte_context):
        out, state = self.model.step(data, {"byte_context": byte_context})
        return out["byte_logprobs"], out["entropy"], state["byte_context"]
