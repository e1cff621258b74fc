"""The export side of int8: GraphSource.calibrate (real step feeds) and the Q/DQ graph the TensorRT
target builds. Both go through neat_edge.calibration (one int8 implementation): the calibration
files and settings of the export in progress (calibration.plan.calibrating, set by export_bundle),
or the defaults (CPython sources, minmax, byte head fp32) when a target is built on its own."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx

from neat_edge.calibration.plan import CalibrationPlan, active_plan, quantize_graph
from neat_edge.calibration.reader import StreamCalibrationReader, read_calibration_files
from neat_edge.errors import NeatError
from neat_edge.export.base import GraphSource


def record_step_feeds(model, patching=None) -> list[dict[str, np.ndarray]]:
    """The step graph's inputs over the calibration files, each file one stream (state carried)."""
    from neat_edge.runtimes import open_model_session

    plan = active_plan() or CalibrationPlan()
    reader = StreamCalibrationReader(lambda: open_model_session(model, patching=patching), plan.files,
                                     plan.segments_per_file, plan.max_segments)
    return reader.all_feeds()


DECODE_STRIDE = {"decode_byte": 16, "decode_patch": 4, "entropy_decode_byte": 16}  # spread over the files


def decode_calibration(model, patching=None):
    """A function giving the decode graphs' inputs over the calibration files (graph name -> feeds),
    recorded once, on first use: each file one stream, its bytes fed one by one through a session's
    decode graphs (teacher forcing), state and caches carried."""
    recorded: dict[str, list] = {}

    def record() -> dict[str, list]:
        if recorded:
            return recorded
        from neat_edge.runtimes import open_model_session

        plan = active_plan() or CalibrationPlan()
        session = open_model_session(model, patching=patching)
        graphs = session.decode_graphs
        run = graphs.run

        calls: dict[str, int] = {}

        def recording(name, feeds):  # every STRIDE-th call of a graph, at most max_segments per graph
            out = run(name, feeds)
            calls[name] = calls.get(name, 0) + 1
            kept = recorded.setdefault(name, [])
            if (calls[name] - 1) % DECODE_STRIDE.get(name, 1) == 0 and len(kept) < plan.max_segments:
                spec = (graphs.graphs.get(name) or graphs.entropy[name]).spec
                kept.append({n: np.ascontiguousarray(feeds[n]) for n in spec.input_names})
            return out

        graphs.run = recording
        seg = model.cfg.segment_len
        for _, data in read_calibration_files(plan.files):
            session.reset()
            session.next_byte_logprobs()  # decode_start
            for byte in data[: plan.segments_per_file * seg]:
                session._append_known(bytes([byte]))
            if all(len(recorded.get(n, [])) >= plan.max_segments for n in ("decode_byte", "decode_patch")):
                break
        return recorded

    return record


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
