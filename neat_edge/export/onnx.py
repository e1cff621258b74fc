"""ONNX target: the step graph through torch.export (dynamo) with named dynamic axes.

fp32 (default): torch.onnx.export of the module. fp16 (`--precision fp16`): the program is exported in
strict mode (full source traces), then converted with ONNX Runtime's own float16 tool
(onnxruntime.transformers.float16) the way its community does it: `keep_io_types` keeps every graph
input and output fp32 (so the state crosses the boundary in fp32), and `node_block_list` keeps the
Titans memory nodes fp32 (export/precision.py says why).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from onnxscript import ir

from neat_edge.errors import NeatError
from neat_edge.export.base import GraphSource, entropy_source, step_source
from neat_edge.export.precision import check_precision, onnx_memory_nodes, require_memory_ops, strict_program
from neat_edge.model.graphs import EntropyStepModule
from neat_edge.model.neat import NeatModel
from neat_edge.spec import GraphSpec

OPSET = 20  # 20: GELU is one op (Gelu), which ONNX Runtime and TensorRT run fused; 18 spells it in five
PRECISION_KEY = "neat.precision"  # ONNX metadata: lets a later target tell what precision a file holds

__all__ = ["OPSET", "OnnxTarget", "EntropyStepModule", "export_graph", "export_entropy_onnx", "onnx_precision"]


def _torch_onnx_export(model, args: tuple, spec: GraphSpec, dynamic_shapes):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.onnx.export(
                model, args, dynamo=True, opset_version=OPSET, input_names=spec.input_names,
                output_names=spec.output_names, dynamic_shapes=dynamic_shapes, optimize=True, verbose=False,
            )
        except Exception as exc:  # the exporter's own errors are long; keep the first line
            raise NeatError(f"ONNX export of graph '{spec.name}' failed: {str(exc).splitlines()[0]}") from exc


def _entry(graph: onnx.ModelProto, path: Path, precision: str, spec: GraphSpec | None = None, **extra) -> dict:
    """The manifest entry of a saved graph; with `spec`, narrowed to the inputs the graph kept."""
    return {"file": path.name, "target": "onnx", "precision": precision, "opset": OPSET,
            "nodes": len(graph.graph.node), "ops": sorted({n.op_type for n in graph.graph.node}), **extra,
            **(spec_for_graph(graph, spec) if spec is not None else {})}


def _save(graph: onnx.ModelProto, path: Path, precision: str) -> None:
    drop_unused_inputs(graph)
    onnx.helper.set_model_props(graph, {PRECISION_KEY: precision})
    onnx.save(graph, str(path))
    onnx.checker.check_model(str(path))


def onnx_precision(path: Path) -> str | None:
    """The precision recorded in an ONNX file written by this target (None for any other file)."""
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return meta.get(PRECISION_KEY)


def export_graph(module: torch.nn.Module, args: tuple, spec: GraphSpec, dynamic_shapes, path: Path) -> dict:
    """torch.export -> ONNX (fp32) for any module whose positional args/outputs follow `spec`."""
    program = _torch_onnx_export(module.eval(), args, spec, dynamic_shapes)
    program.save(str(path))
    graph = onnx.load(str(path))
    _save(graph, path, "fp32")
    return _entry(graph, path, "fp32", spec)


def drop_unused_inputs(graph: onnx.ModelProto) -> None:
    """Remove graph inputs no node reads (a decode graph's spec lists what any memory variant may need):
    runtimes then feed only what the graph uses, and TensorRT, which drops unused inputs from an engine,
    sees the same inputs as every other target."""
    read = {i for n in graph.graph.node for i in n.input} | {o.name for o in graph.graph.output}
    for i in [i for i in graph.graph.input if i.name not in read]:
        graph.graph.input.remove(i)


def spec_for_graph(graph: onnx.ModelProto, spec: GraphSpec) -> dict:
    """The spec's inputs and state pairs restricted to the inputs `graph` has (its manifest entry)."""
    names = {i.name for i in graph.graph.input}
    kept = GraphSpec(spec.name, tuple(t for t in spec.inputs if t.name in names), spec.outputs,
                     tuple((i, o) for i, o in spec.state if i in names))
    return {"inputs": kept.to_dict()["inputs"], "state": kept.to_dict()["state"]}


def strict_onnx_program(source: GraphSource):
    """The source exported in strict mode (every node keeps its full source trace: memory nodes and
    module paths are findable, for fp16 and int8)."""
    return _torch_onnx_export(strict_program(source), source.args, source.spec, None)


def export_fp16_graph(source: GraphSource, path: Path) -> dict:
    """Strict export -> ONNX -> fp16 with fp32 I/O and fp32 Titans memory nodes."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    graph = strict_onnx_program(source).model_proto
    keep = onnx_memory_nodes(graph)
    require_memory_ops(len(keep), source.spec, "ONNX graph")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(graph, keep_io_types=True, node_block_list=keep)
    half = _tidy_fp16(half)
    _save(half, path, "fp16")
    return _entry(half, path, "fp16", source.spec, fp32_memory_nodes=len(keep))


def _tidy_fp16(half: onnx.ModelProto) -> onnx.ModelProto:
    """Four fixes to what the float16 converter leaves: (0) duplicate Casts of one value (same output
    name: an invalid graph) are merged; (1) a value that is fp32 and read as fp32
    still goes through Cast(fp16) -> Cast(fp32) where the converter meets a kept-fp32 node at a kept-
    fp32 output (every next_state.memory.* would be rounded to fp16): such round trips are bypassed;
    (2) value_info keeps pre-conversion types: dropped and inferred again; (3) the I/O casts are
    appended after the nodes that read them: the graph is sorted topologically."""
    graph = half.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    unique, seen = [], {}
    for node in graph.node:  # (0) older converters (onnxruntime <= 1.30) emit one identical Cast per reader
        twin = seen.get(node.output[0]) if len(node.output) == 1 else None
        if twin is not None and cast_to(node) is not None and cast_to(twin) == cast_to(node) \
                and list(twin.input) == list(node.input):
            continue
        seen.update({o: node for o in node.output})
        unique.append(node)
    del graph.node[:]
    graph.node.extend(unique)
    producer = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        inner = producer.get(node.input[0]) if node.input else None
        if cast_to(node) == onnx.TensorProto.FLOAT and inner is not None and cast_to(inner) == onnx.TensorProto.FLOAT16 \
                and types.get(inner.input[0]) == onnx.TensorProto.FLOAT:
            node.input[0] = inner.input[0]  # Cast(fp32 -> fp32): the value, not its fp16 rounding
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [n for n in graph.node if cast_to(n) is None or any(o in used for o in n.output)]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.value_info[:]
    model = ir.from_proto(half)
    model.graph.sort()
    return onnx.shape_inference.infer_shapes(ir.to_proto(model))


class OnnxTarget:
    name = "onnx"

    def __init__(self, precision: str = "fp32", cpu_graphs: bool = True):
        """cpu_graphs: beside each fp32 decode graph, its rewrite for ONNX Runtime's CPU (export/onnx_fusion.py),
        recorded in the graph's entry as `cpu`; the plain graph stays for every other runtime."""
        self.precision = check_precision(precision)
        self.cpu_graphs = cpu_graphs

    def build(self, model: NeatModel, spec: GraphSpec, out_dir: Path) -> dict:
        return self.build_graph(step_source(model, spec), out_dir)

    def build_graph(self, source: GraphSource, out_dir: Path) -> dict:
        path = Path(out_dir) / f"{source.stem}.onnx"
        if self.precision == "fp16":
            return export_fp16_graph(source, path)
        entry = export_graph(source.module, source.args, source.spec, source.torch_dynamic_shapes(), path)
        if self.cpu_graphs and source.stem.startswith("decode_") and source.stem != "decode_svf":
            entry = {**entry, **export_cpu_graph(path)}
        return entry


def export_cpu_graph(plain: Path) -> dict:
    """The CPU rewrite of a saved plain decode graph, as {"cpu": its entry} (nothing when no pass applied:
    ONNX Runtime's CPU then runs the plain graph)."""
    from neat_edge.export.onnx_fusion import FUSED_SUFFIX, fuse_decode_graph

    graph = onnx.load(str(plain))
    report = fuse_decode_graph(graph)
    if not any(report["passes"].values()):
        return {}
    path = plain.with_name(plain.stem + FUSED_SUFFIX)
    onnx.helper.set_model_props(graph, {PRECISION_KEY: "fp32"})
    onnx.save(graph, str(path))
    onnx.checker.check_model(str(path))
    return {"cpu": {"file": path.name, "runtime": "onnxruntime:cpu", "ops": sorted({n.op_type for n in graph.graph.node}),
                    **report}}


def export_entropy_onnx(model, out_dir: Path, filename: str = "entropy.onnx") -> dict:
    """The BLT entropy model as its own graph (batch and segment axes dynamic)."""
    source = entropy_source(model)
    source.stem = Path(filename).stem
    entry = OnnxTarget().build_graph(source, out_dir)
    return {**entry, **source.spec.to_dict()}
