"""quantize_graph: a GraphSource -> Q/DQ int8 ONNX + accuracy report (used by the ONNX int8 target and,
through export/quantize.py, by the TensorRT int8 target), as the CalibrationPlan (settings.py) says.

The accuracy delta is measured the way users will see it: the fp32 ONNX graph and the int8 graph
each score the same held-out stream through a Session (state carried, each graph feeding its own
next_state back), and the difference of their bits/byte is recorded in the bundle's manifest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import onnx

from neat_edge.calibration.int8 import quantize_static_qdq
from neat_edge.calibration.reader import StreamCalibrationReader
from neat_edge.calibration.settings import CalibrationPlan
from neat_edge.errors import NeatError
from neat_edge.export.onnx import strict_onnx_program
from neat_edge.export.precision import require_memory_ops
from neat_edge.export.verify import bits_per_byte, read_corpus


def graph_bits_per_byte(session_factory: Callable, graph_path: Path, spec, data: bytes) -> float:
    """bits/byte of `data` scored through a Session running the ONNX graph at graph_path (one thread)."""
    from neat_edge.runtimes.onnxruntime import OnnxRuntimeBackend

    session = session_factory()
    session.backend = OnnxRuntimeBackend(graph_path, spec, threads=1)
    return bits_per_byte(session.score(data))


def _fp32_onnx(source, path: Path) -> None:
    """The fp32 graph with full node metadata (strict export: memory nodes are findable)."""
    onnx.save(strict_onnx_program(source).model_proto, str(path))


def quantize_graph(source, work: Path, plan: CalibrationPlan) -> tuple[onnx.ModelProto, dict]:
    """GraphSource -> (Q/DQ int8 ONNX, report with the node plan and the bits/byte delta vs fp32)."""
    import logging

    if plan.session_factory is None:
        raise NeatError(f"int8 needs calibration data for graph '{source.spec.name}' (no session to run it)")
    work = Path(work)
    fp32_path, int8_path = work / "fp32.onnx", work / "int8.onnx"
    t0 = time.time()
    _fp32_onnx(source, fp32_path)
    if source.spec.name != "step":  # a decode graph: its own feeds, recorded over the same files
        return _quantize_decode_graph(source, fp32_path, int8_path, plan, t0)
    reader = StreamCalibrationReader(plan.session_factory, plan.files, plan.segments_per_file, plan.max_segments,
                                     input_names=source.spec.input_names)
    samples = len(reader.all_feeds())
    root = logging.getLogger()  # quantize_static logs "consider pre-processing" warnings on the root logger
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        nodes = quantize_static_qdq(fp32_path, int8_path, reader, plan.options)
    finally:
        root.setLevel(level)
    require_memory_ops(len(nodes.memory), source.spec, "ONNX graph")
    data, corpus = read_corpus(plan.corpus, plan.accuracy_segments, _segment_len(source))
    fp32_bpb = graph_bits_per_byte(plan.session_factory, fp32_path, source.spec, data)
    int8_bpb = graph_bits_per_byte(plan.session_factory, int8_path, source.spec, data)
    report = {**nodes.summary(), "calibration_samples": samples, "seconds": round(time.time() - t0, 1),
              "accuracy": {"corpus": corpus, "bytes": len(data), "bits_per_byte_fp32": fp32_bpb,
                           "bits_per_byte": int8_bpb, "bits_per_byte_delta": int8_bpb - fp32_bpb}}
    plan.reports[source.stem] = report
    return onnx.load(str(int8_path)), report


class FeedsReader:
    """onnxruntime.quantization's CalibrationDataReader over recorded feed dicts."""

    def __init__(self, feeds: list[dict], input_names):
        self.feeds = [{k: v for k, v in f.items() if k in set(input_names)} for f in feeds]
        self.rewind()

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)


def _quantize_decode_graph(source, fp32_path: Path, int8_path: Path, plan: CalibrationPlan, t0: float):
    """A decode graph (model/decode.py) to int8 on the decode feeds recorded over the calibration files
    (GraphSource.calibrate). Its SVF products take their weights as inputs (decode_svf), which static
    int8 cannot quantize: what is left are the graph's own weight MatMuls (patch and latent projections,
    gates); a graph with none stays fp32, and says so. Accuracy: the bundle's decode parity."""
    from neat_edge.calibration.int8 import plan_nodes

    graph = onnx.load(str(fp32_path))
    if not plan_nodes(graph, plan.options.exclude).quantize:
        report = {"quantized_matmuls": 0, "precision": "fp32", "seconds": round(time.time() - t0, 1),
                  "why": "no weight MatMul of its own outside the memory and the excluded groups"}
        plan.reports[source.stem] = report
        return graph, report
    feeds = source.calibrate()
    nodes = quantize_static_qdq(fp32_path, int8_path, FeedsReader(feeds, source.spec.input_names), plan.options)
    report = {**nodes.summary(), "calibration_samples": len(feeds), "precision": "int8",
              "seconds": round(time.time() - t0, 1)}
    plan.reports[source.stem] = report
    return onnx.load(str(int8_path)), report


def _segment_len(source) -> int:
    bytes_input = next(t for t in source.spec.inputs if t.name == "bytes")
    return int(source.args[source.spec.inputs.index(bytes_input)].shape[1])
