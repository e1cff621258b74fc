"""What TensorRT's ONNX parser accepts, from its published operator list, and a checker for a graph.

Source: onnx-tensorrt, docs/operators.md ("Supported ONNX Operators"), the TensorRT 10.15 edition:
https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md — "TensorRT 10.15 supports operators
in the inclusive range of opset 9 to opset 24". Every operator marked Y is listed below with its
"Supported Types" column; RESTRICTIONS holds the restrictions of that table that a graph can be
checked for statically (an input that must be a build-time constant).
"""

from __future__ import annotations

import onnx

SOURCE = "https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md"
TENSORRT_VERSION = "10.15"
OPSET_RANGE = (9, 24)

_F = "FP32 FP16 BF16"
_FI = _F + " INT32 INT64"
_FIB = _FI + " BOOL"
SUPPORTED: dict[str, str] = {
    "Abs": _FI, "Acos": _F, "Acosh": _F, "Add": _FI, "And": "BOOL", "ArgMax": _FI, "ArgMin": _FI,
    "Asin": _F, "Asinh": _F, "Atan": _F, "Atanh": _F, "Attention": _F + " INT8 FP8", "AveragePool": _F,
    "BatchNormalization": _F, "BlackmanWindow": "FP32 FP16", "Cast": _FIB + " UINT8", "CastLike": _FIB + " UINT8",
    "Ceil": _F, "Celu": _F, "Clip": _F, "Concat": _FIB,
    "Constant": _FIB + " FP8 FP4 INT4", "ConstantOfShape": _FIB + " FP8 FP4 INT4", "Conv": _F, "ConvTranspose": _F,
    "Cos": _F, "Cosh": _F, "CumSum": _F, "DeformConv": "FP32 FP16", "DepthToSpace": _FI,
    "DequantizeLinear": "INT8 FP8 FP4 INT4", "Div": _FI, "Dropout": _F, "Einsum": _F, "Elu": _F, "Equal": _FI,
    "Erf": _F, "Exp": _F, "Expand": _FIB, "EyeLike": _FIB, "Flatten": _FIB, "Floor": _F, "Gather": _FIB,
    "GatherElements": _FIB, "GatherND": _FIB, "Gelu": _FI + " INT8", "Gemm": _F, "GlobalAveragePool": _F,
    "GlobalLpPool": _F, "GlobalMaxPool": _F, "Greater": _FI, "GreaterOrEqual": _FI, "GridSample": "FP32 FP16",
    "GroupNormalization": _F, "GRU": _F, "HammingWindow": "FP32 FP16", "HannWindow": "FP32 FP16",
    "HardSigmoid": _F, "HardSwish": _F, "Hardmax": _F, "Identity": _FIB, "If": _FIB, "ImageScaler": _F,
    "InstanceNormalization": _F, "IsInf": _F, "IsNaN": _FI, "LayerNormalization": _F, "LeakyRelu": _F,
    "Less": _FI, "LessOrEqual": _FI, "Log": _F, "LogSoftmax": _F, "Loop": _FIB, "LRN": _F, "LSTM": _F,
    "LpNormalization": _F, "LpPool": _F, "MatMul": _F, "Max": _FI, "MaxPool": _F, "Mean": _FI + " FP8",
    "MeanVarianceNormalization": _F, "Min": _FI, "Mish": "FP32 FP16", "Mod": _FI, "Mul": _FI, "Neg": _FI,
    "NonMaxSuppression": "FP32 FP16", "NonZero": "FP32 FP16", "Not": "BOOL", "OneHot": _FIB, "Or": "BOOL",
    "Pad": _FI, "ParametricSoftplus": _F, "Pow": _FI, "PRelu": _F, "QuantizeLinear": _F, "RandomNormal": _F,
    "RandomNormalLike": _F, "RandomUniform": _F, "RandomUniformLike": _F, "Range": _FI, "Reciprocal": _F,
    "ReduceL1": _FI, "ReduceL2": _FI, "ReduceLogSum": _FI, "ReduceLogSumExp": _FI, "ReduceMax": _FI,
    "ReduceMean": _FI, "ReduceMin": _FI, "ReduceProd": _FI, "ReduceSum": _FI, "ReduceSumSquare": _FI,
    "Relu": _FI, "Reshape": _FIB, "Resize": _F, "ReverseSequence": _FIB, "RMSNormalization": _F, "RNN": _F,
    "RoiAlign": "FP32 FP16", "RotaryEmbedding": _F, "Round": _F, "STFT": "FP32", "ScaledTanh": _F, "Scan": _F,
    "Scatter": _FI, "ScatterElements": _FI, "ScatterND": _FI, "Selu": _F, "Shape": _FIB, "Shrink": _FI,
    "Sigmoid": _F, "Sign": _FI, "Sin": _F, "Sinh": _F, "Size": _FIB, "Slice": _FIB, "Softmax": _F,
    "Softplus": _F, "Softsign": _F, "SpaceToDepth": _FI, "Split": _FIB, "Sqrt": _F, "Squeeze": _FIB,
    "Sub": _FI, "Sum": _FI, "Tan": _F, "Tanh": _F, "TensorScatter": _F + " INT32", "ThresholdedRelu": _F,
    "Tile": _FIB, "TopK": _FI, "Transpose": _FIB, "Trilu": _FIB, "Unsqueeze": _FIB, "Upsample": _F,
    "Where": _FIB, "Xor": "BOOL",
}
# op -> index of the input that must be a build-time constant ("axis must be a build-time constant",
# "`axes` must be an initializer", "`axes` must be resolvable to a constant").
RESTRICTIONS = {"CumSum": 1, "Squeeze": 1, "Unsqueeze": 1, **{op: 1 for op in SUPPORTED if op.startswith("Reduce")}}

ONNX_TO_TRT = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16", onnx.TensorProto.BFLOAT16: "BF16",
               onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64", onnx.TensorProto.INT8: "INT8",
               onnx.TensorProto.UINT8: "UINT8", onnx.TensorProto.BOOL: "BOOL", onnx.TensorProto.DOUBLE: "DOUBLE"}


def unsupported_ops(graph: onnx.ModelProto) -> list[str]:
    """Problems TensorRT's parser would reject, one line each ([] = every node is supported).
    `graph` must carry inferred types (onnx.shape_inference.infer_shapes) for the dtype checks."""
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*graph.graph.input, *graph.graph.value_info, *graph.graph.output)}
    types.update({t.name: t.data_type for t in graph.graph.initializer})
    constant = {t.name for t in graph.graph.initializer}
    constant.update(o for n in graph.graph.node if n.op_type == "Constant" for o in n.output)
    problems = []
    for opset in graph.opset_import:
        if opset.domain in ("", "ai.onnx") and not OPSET_RANGE[0] <= opset.version <= OPSET_RANGE[1]:
            problems.append(f"opset {opset.version} is outside TensorRT {TENSORRT_VERSION}'s range {OPSET_RANGE}")
    for node in graph.graph.node:
        where = f"{node.op_type} node '{node.name}'"
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED:
            problems.append(f"{where}: operator not supported by TensorRT {TENSORRT_VERSION}'s ONNX parser")
            continue
        allowed = SUPPORTED[node.op_type].split()
        checked = [node.input[0]] if node.input and node.input[0] else list(node.output[:1])
        dtypes = [types.get(name) for name in checked]
        if node.op_type in ("Cast", "CastLike"):
            dtypes += [types.get(node.output[0])]
        for dtype in dtypes:
            if dtype is None:
                problems.append(f"{where}: no inferred type")
            elif ONNX_TO_TRT.get(dtype) not in allowed:
                name = onnx.TensorProto.DataType.Name(dtype)
                problems.append(f"{where}: type {name} not supported (supported: {', '.join(allowed)})")
        const_input = RESTRICTIONS.get(node.op_type)
        if const_input is not None and len(node.input) > const_input and node.input[const_input] \
                and node.input[const_input] not in constant:
            problems.append(f"{where}: input {const_input} must be a build-time constant")
    return problems
