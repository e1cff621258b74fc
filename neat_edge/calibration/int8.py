"""Static INT8 (Q/DQ) through onnxruntime.quantization: the one int8 implementation of the project,
used by the ONNX target's int8 graph and by TensorRT's explicit quantization (same Q/DQ ONNX).

  * QDQ format, int8 weights symmetric per output channel, activations per tensor with ranges calibrated
    on real streams (reader.py: state inputs as they are after k segments, not M_0): uint8 asymmetric for
    ONNX Runtime on CPU (U8S8), int8 symmetric (zero points 0) for TensorRT's explicit quantization.
  * Only MatMul/Gemm nodes with a weight initializer are candidates: attention products of two
    activations keep fp32 (their ranges move with every segment's content).
  * Never quantized: the Titans memory (projections, gates, retrieval and the closed-form update of
    Eq 16-18: a test-time training step of size θ on fp32 state would be rounded away, see
    export/precision.py) — the memory state inputs/outputs stay fp32 too, since only MatMul inputs
    get Q/DQ.
  * Kept fp32 by default (SENSITIVE), as measured on the tiny default (issue 9 note):
      svf_u  the second product of every SVF linear, ((x V) ⊙ σ ⊙ z) Uᵀ: its input is scaled by the
             singular values, so its channels span orders of magnitude and one per-tensor int8 scale
             rounds the small-σ directions to zero (+0.083 bits/byte with it, +0.018 without);
      head   the byte head, whose output goes straight into log-softmax.
    Other groups can be excluded by name (GROUPS).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from neat_edge.errors import NeatError
from neat_edge.export.precision import onnx_memory_nodes

NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # torch.onnx's module path of every node
METHODS = ("minmax", "percentile", "entropy")
ACTIVATION_TYPES = ("s8", "u8")
# Groups of weight MatMuls, by the module path that torch.onnx records ("model.byte_head", ...).
GROUPS = {
    "head": ("model.byte_head",),
    "encoder": ("model.encoder",),
    "decoder": ("model.decoder",),
    "latent": ("model.latent",),
    "aux_heads": ("model.image_head", "model.dispatch_head"),
    "svf_u": (),  # structural, not a module path: see in_group
}
SENSITIVE = ("svf_u", "head")
CLASS_KEY = "pkg.torch.onnx.class_hierarchy"


@dataclass(frozen=True)
class Int8Options:
    method: str = "minmax"  # onnxruntime.quantization CalibrationMethod: minmax | percentile | entropy
    exclude: tuple[str, ...] = SENSITIVE  # GROUPS kept fp32 (the memory always is)
    percentile: float = 99.999  # for method="percentile"
    # u8 (U8S8: asymmetric uint8 activations, int8 weights): ONNX Runtime's fast path on x86 CPUs without
    # VNNI (a 32x384x1536 Q/DQ MatMul on this AVX2 CPU, one thread: 1.88x fp32 vs 1.26x with s8);
    # s8: symmetric int8, what TensorRT's explicit quantization accepts (export/quantize.py forces it).
    activations: str = "u8"

    def __post_init__(self):
        if self.activations not in ACTIVATION_TYPES:
            raise NeatError(f"unknown int8 activation type '{self.activations}' (choose from {', '.join(ACTIVATION_TYPES)})")
        if self.method not in METHODS:
            raise NeatError(f"unknown calibration method '{self.method}' (choose from {', '.join(METHODS)})")
        unknown = sorted(set(self.exclude) - set(GROUPS))
        if unknown:
            raise NeatError(f"unknown int8 exclusion group '{unknown[0]}' (choose from {', '.join(GROUPS)})")

    def to_dict(self) -> dict:
        return {**asdict(self), "exclude": list(self.exclude)}


def module_path(node: onnx.NodeProto) -> str:
    """The PyTorch module a node came from ("model.decoder.layers.1.mlp.up"), '' if unknown."""
    scopes = next((p.value for p in node.metadata_props if p.key == NAME_SCOPES_KEY), "")
    # recorded as a Python-list literal of nested scopes, the innermost module last but one
    parts = [s.strip(" '\"") for s in scopes.strip("[]").split(",") if s.strip(" '\"")]
    return parts[-2] if len(parts) >= 2 else ""


def _is_svf(node: onnx.NodeProto) -> bool:
    return any(p.key == CLASS_KEY and "SVFLinear" in p.value for p in node.metadata_props)


def in_group(path: str, group: str, svf_u: bool = False) -> bool:
    if group == "svf_u":
        return svf_u
    return any(path == p or path.startswith(p + ".") for p in GROUPS[group])


@dataclass
class NodePlan:
    quantize: list[str] = field(default_factory=list)
    memory: list[str] = field(default_factory=list)
    excluded: dict[str, list[str]] = field(default_factory=dict)  # group -> node names kept fp32
    float_readers_restored: int = 0  # inputs of unquantized nodes given back their float tensor

    def summary(self) -> dict:
        return {"quantized_matmuls": len(self.quantize), "fp32_memory_nodes": len(self.memory),
                "excluded_matmuls": {g: len(n) for g, n in self.excluded.items()},
                "float_readers_restored": self.float_readers_restored}


def plan_nodes(graph: onnx.ModelProto, exclude=SENSITIVE) -> NodePlan:
    """Which weight MatMul/Gemm nodes to quantize: not the memory's, not the excluded groups'."""
    memory = onnx_memory_nodes(graph)
    skip = set(memory)
    weights = {t.name for t in graph.graph.initializer}
    weights.update(o for n in graph.graph.node if n.op_type == "Constant" for o in n.output)
    plan = NodePlan(memory=memory, excluded={g: [] for g in exclude})
    seen: dict[str, int] = {}  # weight MatMuls met so far per module (an SVF linear has V, then U)
    for n in graph.graph.node:
        if n.op_type not in ("MatMul", "Gemm") or n.name in skip or not any(i in weights for i in n.input[1:2]):
            continue
        path = module_path(n)
        seen[path] = seen.get(path, 0) + 1
        svf_u = _is_svf(n) and seen[path] == 2
        group = next((g for g in exclude if in_group(path, g, svf_u)), None)
        if group:
            plan.excluded[group].append(n.name)
        else:
            plan.quantize.append(n.name)
    return plan


def quantize_static_qdq(fp32_path: Path, out_path: Path, reader, options: Int8Options = Int8Options()) -> NodePlan:
    """fp32 ONNX (with torch.onnx's node metadata) -> Q/DQ int8 ONNX at out_path; returns the node plan.
    `reader` is an onnxruntime.quantization CalibrationDataReader (reader.StreamCalibrationReader)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(fp32_path))
    plan = plan_nodes(graph, options.exclude)
    if not plan.quantize:
        raise NeatError("no weight MatMul is left to quantize to int8 (every group is excluded)")
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[options.method]
    unsigned = options.activations == "u8"
    extra = {"ActivationSymmetric": not unsigned, "WeightSymmetric": True,
             "QuantizeBias": False,  # TensorRT dequantizes int8 only: biases stay float
             # a Gemm's output would get Q/DQ too: graph outputs (dispatch logits) and the next op's input
             # are left in float, only the products' inputs are int8
             "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]}
    if options.method == "percentile":
        extra["CalibPercentile"] = options.percentile
    with warnings.catch_warnings():
        # the calibrator computes a zero point for every tensor it saw, including the attention masks'
        # -inf (0/0 and inf casts) that no quantized node reads: numpy warns, nothing uses the value
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
        quantize_static(fp32_path, out_path, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8 if unsigned else QuantType.QInt8,
                        weight_type=QuantType.QInt8, nodes_to_quantize=plan.quantize, calibrate_method=method,
                        extra_options=extra)
    quantized = onnx.load(str(out_path))
    plan.float_readers_restored = float_inputs_for_unquantized(quantized, set(plan.quantize))
    onnx.save(quantized, str(out_path))
    return plan


def float_inputs_for_unquantized(graph: onnx.ModelProto, quantized: set[str]) -> int:
    """quantize_static puts one Q/DQ pair on an activation and hands its DequantizeLinear output to
    *every* consumer of that activation, quantized or not; when a memory projection shares its input
    with a quantized product (the same normalised x), the memory would read int8-rounded values. Every
    node that is not quantized reads the float tensor again. Returns how many inputs were rewired."""
    nodes = graph.graph.node
    producer = {o: n for n in nodes for o in n.output}
    original = {}  # DQ output -> the float tensor its Q read
    for n in nodes:
        if n.op_type == "DequantizeLinear" and n.input[0] in producer and producer[n.input[0]].op_type == "QuantizeLinear":
            original[n.output[0]] = producer[n.input[0]].input[0]
    rewired = 0
    for n in nodes:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") or n.name in quantized:
            continue
        for k, name in enumerate(n.input):
            if name in original:
                n.input[k] = original[name]
                rewired += 1
    return rewired
