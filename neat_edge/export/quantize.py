"""int8 graphs with explicit quantization (Q/DQ), for TensorRT: onnxruntime.quantization.quantize_static
in QDQ format, the way TensorRT consumes int8 ONNX (symmetric: TensorRT needs zero points of 0;
per-channel weights). Only MatMul/Gemm nodes with a weight initializer are quantized, never a node of
the Titans memory (its update stays fp32, export/precision.py) nor the attention products of two
activations. Calibration: a stream of real bytes through the PyTorch model, state carried, recording
every step's inputs — CPython's textwrap.py source, which is neither the parity corpus nor ours.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import onnx

from neat_edge.errors import NeatError
from neat_edge.export.base import GraphSource
from neat_edge.export.precision import onnx_memory_nodes, require_memory_ops, strict_program

CALIBRATION_SEGMENTS = 16


def calibration_text() -> bytes:
    return Path(textwrap.__file__).read_bytes()


def record_step_feeds(model, patching=None, segments: int = CALIBRATION_SEGMENTS) -> list[dict[str, np.ndarray]]:
    """The step graph's inputs for `segments` consecutive segments of calibration text (state carried)."""
    from neat_edge.runtimes import open_model_session

    session = open_model_session(model, patching=patching)
    inner, recorded = session.backend, []

    class Recorder:
        name, spec = inner.name, inner.spec

        def step(self, feeds):
            recorded.append({k: np.ascontiguousarray(v) for k, v in feeds.items()})
            return inner.step(feeds)

    session.backend = Recorder()
    session.score(calibration_text()[: segments * model.cfg.segment_len])
    return recorded


def _weight_matmuls(graph: onnx.ModelProto, exclude: set[str]) -> list[str]:
    weights = {t.name for t in graph.graph.initializer}
    weights.update(o for n in graph.graph.node if n.op_type == "Constant" for o in n.output)
    return [n.name for n in graph.graph.node if n.op_type in ("MatMul", "Gemm") and n.name not in exclude
            and any(i in weights for i in n.input[1:2])]


def quantize_qdq(source: GraphSource, work: Path) -> onnx.ModelProto:
    """fp32 strict-exported ONNX -> Q/DQ int8 on weight MatMul/Gemm outside the memory."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from neat_edge.export.onnx import OPSET

    if source.calibrate is None:
        raise NeatError(f"int8 needs calibration data for graph '{source.spec.name}'")
    import torch

    with torch.no_grad():
        program = torch.onnx.export(strict_program(source), source.args, dynamo=True, opset_version=OPSET,
                                    input_names=source.spec.input_names, output_names=source.spec.output_names,
                                    optimize=True, verbose=False)
    graph = program.model_proto
    memory = set(onnx_memory_nodes(graph))
    require_memory_ops(len(memory), source.spec, "ONNX graph")
    fp32_path, int8_path = work / "fp32.onnx", work / "int8.onnx"
    onnx.save(graph, str(fp32_path))
    feeds = source.calibrate()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    quantize_static(fp32_path, int8_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    nodes_to_quantize=_weight_matmuls(graph, memory),
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "QuantizeBias": False})  # TensorRT dequantizes int8 only: biases stay float
    return onnx.load(str(int8_path))
