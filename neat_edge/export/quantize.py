"""The export side of int8: the Q/DQ graph the TensorRT target builds (GraphSource.calibrate's feeds are
calibration/recording.py's). Both go through neat_edge.calibration (one int8 implementation): the calibration
files and settings of the export in progress (calibration.settings.calibrating, set by export_bundle),
or the defaults (CPython sources, minmax, byte head fp32) when a target is built on its own."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx

from neat_edge.calibration.plan import quantize_graph
from neat_edge.calibration.settings import CalibrationPlan, active_plan
from neat_edge.errors import NeatError
from neat_edge.export.base import GraphSource


def plan_for_source(source: GraphSource) -> CalibrationPlan:
    """Default settings, calibrated through a session over the source's own model (fixed patching;
    a model with entropy patching is calibrated by export_bundle, which has its entropy model)."""
    from neat_edge.runtimes import open_model_session

    model = getattr(source.module, "model", None)
    if model is None or not hasattr(model, "initial_state"):
        raise NeatError(f"int8 needs calibration data for graph '{source.spec.name}'")
    return CalibrationPlan(session_factory=lambda: open_model_session(model))


def quantize_qdq(source: GraphSource, work: Path) -> onnx.ModelProto:
    """fp32 strict-exported ONNX -> Q/DQ int8 (TensorRT's explicit quantization takes it as it is)."""
    if source.calibrate is None:
        raise NeatError(f"int8 needs calibration data for graph '{source.spec.name}'")
    plan = active_plan() or plan_for_source(source)
    if plan.session_factory is None:
        plan.session_factory = plan_for_source(source).session_factory
    # TensorRT's explicit quantization takes symmetric int8 activations only (zero point 0)
    plan = dataclasses.replace(plan, options=dataclasses.replace(plan.options, activations="s8"))
    return quantize_graph(source, work, plan)[0]
