"""Calibration: int8 and compressed graphs measured against fp32.

reader.py   StreamCalibrationReader: onnxruntime.quantization's CalibrationDataReader over byte files,
            each run through a Session so the state inputs are what a running stream holds
int8.py     static Q/DQ int8 through onnxruntime.quantization (per-channel weights; memory + state fp32)
plan.py     CalibrationPlan (files, method, held-out corpus) and quantize_graph (int8 + bits/byte delta)
targets.py  Int8OnnxTarget: --target onnx --precision int8 (TensorRT int8 uses the same graph)
coreml.py   Core ML weight compression through coremltools.optimize.coreml (linear int8, palettization)
"""

from neat_edge.calibration.int8 import GROUPS, METHODS, Int8Options
from neat_edge.calibration.plan import quantize_graph
from neat_edge.calibration.reader import StreamCalibrationReader, read_calibration_files, stream_feeds
from neat_edge.calibration.settings import CalibrationPlan, calibrating

__all__ = ["CalibrationPlan", "GROUPS", "Int8Options", "METHODS", "StreamCalibrationReader", "calibrating",
           "quantize_graph", "read_calibration_files", "stream_feeds"]
