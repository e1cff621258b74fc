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


class OnnxTarget:
    name = "onnx"

    def build(self, model: NeatModel, spec: GraphSpec, out_dir: Path, filename: str = "step.onnx") -> dict:
        module = StepModule(model, spec).eval()
        path = Path(out_dir) / filename
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                program = torch.onnx.export(
                    module, example_inputs(model, spec), dynamo=True, opset_version=OPSET,
                    input_names=spec.input_names, output_names=spec.output_names,
                    dynamic_shapes=_dynamic_shapes(spec, model), optimize=True, verbose=False,
                )
            except Exception as exc:  # the exporter's own errors are long; keep the first line
                raise NeatError(f"ONNX export failed: {str(exc).splitlines()[0]}") from exc
        program.save(str(path))
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph)
        return {"file": filename, "target": self.name, "precision": "fp32", "opset": OPSET,
                "ops": sorted({n.op_type for n in graph.graph.node})}
