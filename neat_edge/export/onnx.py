"""ONNX target: the step graph through torch.export (dynamo) with named dynamic axes."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch.export import Dim

from neat_edge.errors import NeatError
from neat_edge.export.base import StepModule, example_inputs
from neat_edge.export.spec import GraphSpec
from neat_edge.model.neat import NeatModel

OPSET = 18


def _dynamic_shapes(spec: GraphSpec, model: NeatModel) -> dict:
    cfg = model.cfg
    dims = {"batch": Dim("batch", min=1, max=4096), "segment": Dim("segment", min=1, max=cfg.segment_len),
            "patches": Dim("patches", min=1, max=cfg.segment_len)}
    arg_names = ["data", "patch_ids", "patch_mask", "svf_z"]
    shapes = {}
    for i, t in enumerate(spec.inputs):
        shape = {axis: dims[name] for axis, name in t.dynamic_axes.items()}
        if i < len(arg_names):
            shapes[arg_names[i]] = shape
        else:
            shapes.setdefault("state", []).append(shape)
    shapes["state"] = tuple(shapes.get("state", []))
    return shapes


def export_graph(module: torch.nn.Module, args: tuple, spec: GraphSpec, dynamic_shapes, path: Path) -> dict:
    """torch.export -> ONNX for any module whose positional args/outputs follow `spec`."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module.eval(), args, dynamo=True, opset_version=OPSET, input_names=spec.input_names,
                output_names=spec.output_names, dynamic_shapes=dynamic_shapes, optimize=True, verbose=False,
            )
        except Exception as exc:  # the exporter's own errors are long; keep the first line
            raise NeatError(f"ONNX export of graph '{spec.name}' failed: {str(exc).splitlines()[0]}") from exc
    program.save(str(path))
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    return {"file": path.name, "target": "onnx", "precision": "fp32", "opset": OPSET,
            "ops": sorted({n.op_type for n in graph.graph.node})}


class OnnxTarget:
    name = "onnx"

    def build(self, model: NeatModel, spec: GraphSpec, out_dir: Path, filename: str = "step.onnx") -> dict:
        return export_graph(StepModule(model, spec), example_inputs(model, spec), spec,
                            _dynamic_shapes(spec, model), Path(out_dir) / filename)


class EntropyStepModule(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, data, byte_context):
        out, state = self.model.step(data, {"byte_context": byte_context})
        return out["byte_logprobs"], out["entropy"], state["byte_context"]


def export_entropy_onnx(model, out_dir: Path, filename: str = "entropy.onnx") -> dict:
    """The BLT entropy model as its own graph (batch and segment axes dynamic)."""
    from neat_edge.export.spec import entropy_spec

    spec = entropy_spec(model)
    seg = model.cfg.segment_len
    data = torch.randint(0, 256, (2, seg), generator=torch.Generator().manual_seed(0))
    dims = {"data": {0: Dim("batch", min=1, max=4096), 1: Dim("segment", min=1, max=seg)},
            "byte_context": {0: Dim("batch", min=1, max=4096)}}
    entry = export_graph(EntropyStepModule(model), (data, model.initial_state(2)["byte_context"]), spec, dims,
                         Path(out_dir) / filename)
    return {**entry, **spec.to_dict()}
