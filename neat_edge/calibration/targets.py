"""The ONNX target's int8 graph, a peer of the fp32 / fp16 ONNX targets (export/base.py interface):
static Q/DQ int8 calibrated on real streams (plan.py), with its bits/byte delta vs the fp32 graph
in the manifest entry."""

from __future__ import annotations

import tempfile
from pathlib import Path

from neat_edge.calibration.plan import quantize_graph
from neat_edge.calibration.settings import CalibrationPlan, active_plan
from neat_edge.export.base import GraphSource, step_source
from neat_edge.spec import GraphSpec


class Int8OnnxTarget:
    """--target onnx --precision int8 [--calibration FILES...]."""

    name, precision = "onnx", "int8"

    def __init__(self, plan: CalibrationPlan | None = None):
        self.plan = plan

    def build(self, model, spec: GraphSpec, out_dir: Path) -> dict:
        return self.build_graph(step_source(model, spec), out_dir)

    def build_graph(self, source: GraphSource, out_dir: Path) -> dict:
        from neat_edge.export.onnx import OPSET, OnnxTarget, _save, spec_for_graph

        if source.calibrate is None:  # a graph without calibration feeds (the entropy model) stays fp32
            return OnnxTarget("fp32").build_graph(source, out_dir)
        plan = self.plan or active_plan() or CalibrationPlan()
        if plan.session_factory is None:
            from neat_edge.export.quantize import plan_for_source

            plan.session_factory = plan_for_source(source).session_factory
        path = Path(out_dir) / f"{source.stem}.onnx"
        with tempfile.TemporaryDirectory() as tmp:
            graph, report = quantize_graph(source, Path(tmp), plan)
        precision = report.get("precision", "int8")  # a decode graph with nothing to quantize stays fp32
        _save(graph, path, precision)
        return {"file": path.name, "target": self.name, "precision": precision, "opset": OPSET,
                **spec_for_graph(graph, source.spec),
                "nodes": len(graph.graph.node), "ops": sorted({n.op_type for n in graph.graph.node}),
                "calibration": {**plan.settings(), **report}}
