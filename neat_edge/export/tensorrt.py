"""TensorRT target: a TensorRT-ready ONNX, a `trtexec` recipe, and (where TensorRT and a GPU exist) the
engine, built through the TensorRT Python API.

TensorRT-ready ONNX ({stem}.trt.onnx), from the same GraphSource as every target:
  * precision is in the graph itself, and the engine is built *strongly typed* (TensorRT 10's
    STRONGLY_TYPED network / `trtexec --stronglyTyped`): fp32; fp16 = the ONNX target's fp16 graph
    (fp32 I/O, Titans memory nodes fp32); int8 = explicit Q/DQ from onnxruntime.quantization
    (static, symmetric, per-channel, calibrated on CPython's textwrap.py source) on the weight
    MatMul/Gemm nodes outside the memory, whose update stays fp32;
  * simplified with onnxsim (constant folding, shape-op folding), or onnxscript's optimizer where
    onnxsim is not installed; static everywhere except the named axes batch / segment / patches,
    which get one optimization profile (min / opt / max) recorded in the manifest;
  * checked: ONNX checker with full shape inference (strict mode), and every node against TensorRT's
    published operator list (export/tensorrt_ops.py).
Where TensorRT is missing the target still writes the ONNX and the recipe; the entry says why no
engine was built and export_bundle reports it (a `--target tensorrt` export then exits non-zero).
"""

from __future__ import annotations

import importlib.util
import shlex
import tempfile
import warnings
from pathlib import Path

import onnx

from neat_edge.errors import NeatError
from neat_edge.export.base import GraphSource, step_source
from neat_edge.export.onnx import OPSET, OnnxTarget, drop_unused_inputs, onnx_precision, spec_for_graph
from neat_edge.export.precision import PRECISIONS, check_precision
from neat_edge.export.tensorrt_ops import SOURCE, TENSORRT_VERSION, unsupported_ops
from neat_edge.fileio import atomic_write
from neat_edge.model.neat import NeatModel
from neat_edge.spec import GraphSpec

TIMING_CACHE = "tensorrt.timing.cache"
INSTALL_HINT = "pip install tensorrt (Linux, NVIDIA GPU)"


def simplify(graph: onnx.ModelProto, keep_constants_quantized: bool = False) -> tuple[onnx.ModelProto, str]:
    """onnxsim where installed (its community's tool for TensorRT-bound graphs), else onnxscript's
    optimizer. A Q/DQ graph is simplified without constant folding, which would fold the weights'
    DequantizeLinear back into fp32 constants."""
    if importlib.util.find_spec("onnxsim") is not None:
        import onnxsim

        simplified, ok = onnxsim.simplify(graph, skip_constant_folding=keep_constants_quantized)
        if not ok:
            raise NeatError("onnxsim could not validate the simplified TensorRT graph")
        return simplified, f"onnxsim {onnxsim.__version__}"
    import onnxscript
    from onnxscript import optimizer

    return optimizer.optimize(graph), f"onnxscript.optimizer {onnxscript.__version__}"


def check_tensorrt_ready(graph: onnx.ModelProto) -> onnx.ModelProto:
    """Full shape inference (strict) + checker; every node in TensorRT's parser list. Returns the
    graph with inferred types; raises NeatError naming the first problems otherwise."""
    try:
        inferred = onnx.shape_inference.infer_shapes(graph, check_type=True, strict_mode=True, data_prop=True)
        onnx.checker.check_model(inferred, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise NeatError(f"the TensorRT-ready ONNX fails the ONNX checker: {str(exc).splitlines()[0]}") from None
    problems = unsupported_ops(inferred)
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise NeatError(f"not TensorRT-ready: {'; '.join(problems[:3])}{more}")
    return inferred


def profile_shapes(source: GraphSource, max_batch: int, inputs=None) -> dict[str, dict[str, list[int]]]:
    """One optimization profile: min / opt / max of every input (of `inputs`, the names the graph kept,
    when given) that has a dynamic axis."""
    bounds = {**source.axes, "batch": (1, 1, max_batch)}
    profiles = {}
    for t in source.spec.inputs:
        if not t.dynamic_axes or (inputs is not None and t.name not in inputs):
            continue
        profiles[t.name] = {kind: [bounds[d][k] if isinstance(d, str) else d for d in t.shape]
                            for k, kind in enumerate(("min", "opt", "max"))}
    return profiles


def trtexec_command(onnx_file: str, engine_file: str, profiles: dict, workspace_mb: int) -> str:
    def shapes(kind):
        return ",".join(f"{name}:{'x'.join(map(str, p[kind]))}" for name, p in profiles.items())

    args = ["trtexec", f"--onnx={onnx_file}", f"--saveEngine={engine_file}", "--stronglyTyped",
            f"--minShapes={shapes('min')}", f"--optShapes={shapes('opt')}", f"--maxShapes={shapes('max')}",
            f"--timingCacheFile={TIMING_CACHE}", f"--memPoolSize=workspace:{workspace_mb}M"]
    return " ".join(shlex.quote(a) for a in args)


def tensorrt_missing() -> str | None:
    """Why no engine can be built here (None: TensorRT is importable; the GPU is checked by the build)."""
    if importlib.util.find_spec("tensorrt") is None:
        return f"TensorRT is not installed ({INSTALL_HINT})"
    return None


def build_engine(onnx_path: Path, engine_path: Path, profiles: dict, workspace_mb: int) -> None:
    """The engine through the TensorRT 10 Python API: ONNX parser, strongly typed network, one
    optimization profile, a timing cache kept next to the engine (reused by later builds)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # no CUDA device / driver: TensorRT cannot create a builder
        raise NeatError(f"TensorRT cannot start a builder (is there an NVIDIA GPU?): {exc}") from None
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(min(parser.num_errors, 3)))
        raise NeatError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    cache_path = engine_path.parent / TIMING_CACHE
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for name, p in profiles.items():
        profile.set_shape(name, p["min"], p["opt"], p["max"])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise NeatError(f"TensorRT could not build an engine from {onnx_path.name} (see TensorRT's log above)")
    atomic_write(engine_path, lambda tmp: Path(tmp).write_bytes(bytes(serialized)))
    timing = bytes(memoryview(config.get_timing_cache().serialize()))
    atomic_write(cache_path, lambda tmp: Path(tmp).write_bytes(timing))


class TensorRTTarget:
    name = "tensorrt"

    def __init__(self, precision: str = "fp16", max_batch: int = 8, workspace_mb: int = 4096):
        self.precision = check_precision(precision, PRECISIONS)
        self.max_batch, self.workspace_mb = max_batch, workspace_mb

    def build(self, model: NeatModel, spec: GraphSpec, out_dir: Path) -> dict:
        return self.build_graph(step_source(model, spec), out_dir)

    def _source_onnx(self, source: GraphSource, out_dir: Path, precision: str) -> onnx.ModelProto:
        """The ONNX graph in `precision`: the ONNX target's file of this bundle when it has that
        precision (no second export), else exported here."""
        existing = Path(out_dir) / f"{source.stem}.onnx"
        if precision != "int8" and existing.is_file() and onnx_precision(existing) == precision:
            return onnx.load(str(existing))
        with tempfile.TemporaryDirectory() as tmp:
            if precision == "int8":
                from neat_edge.export.quantize import quantize_qdq

                return quantize_qdq(source, Path(tmp))
            OnnxTarget(precision).build_graph(source, Path(tmp))
            return onnx.load(str(Path(tmp) / f"{source.stem}.onnx"))

    def build_graph(self, source: GraphSource, out_dir: Path) -> dict:
        out_dir = Path(out_dir)
        # int8 needs calibration feeds; a graph without them (the small entropy model) runs fp16.
        precision = "fp16" if self.precision == "int8" and source.calibrate is None else self.precision
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph, simplifier = simplify(self._source_onnx(source, out_dir, precision), precision == "int8")
        drop_unused_inputs(graph)  # simplification can leave an input no node reads
        check_tensorrt_ready(graph)
        onnx_file, engine_file = f"{source.stem}.trt.onnx", f"{source.stem}.plan"
        onnx.save(graph, str(out_dir / onnx_file))
        profiles = profile_shapes(source, self.max_batch, {i.name for i in graph.graph.input})
        recipe = f"{source.stem}.trtexec.sh"
        command = trtexec_command(onnx_file, engine_file, profiles, self.workspace_mb)
        script = f'#!/usr/bin/env bash\n# the engine build of neat-export --target tensorrt, as one trtexec command\n' \
                 f'set -euo pipefail\ncd "$(dirname "$0")"\n{command}\n'
        atomic_write(out_dir / recipe, lambda tmp: Path(tmp).write_text(script))
        (out_dir / recipe).chmod(0o755)
        missing = tensorrt_missing()
        if missing is None:
            build_engine(out_dir / onnx_file, out_dir / engine_file, profiles, self.workspace_mb)
        return {"file": onnx_file, "target": self.name, "precision": precision, "opset": OPSET,
                **spec_for_graph(graph, source.spec),
                "nodes": len(graph.graph.node), "ops": sorted({n.op_type for n in graph.graph.node}),
                "simplifier": simplifier, "strongly_typed": True, "profiles": profiles,
                "engine": engine_file, "engine_built": missing is None, "engine_missing": missing,
                "trtexec": recipe, "timing_cache": TIMING_CACHE,
                "operator_list": {"source": SOURCE, "tensorrt": TENSORRT_VERSION}}
