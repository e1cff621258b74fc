"""Core ML target: an ML program (.mlpackage) converted by coremltools from torch.export.

Same GraphSource as every target (the step graph, the entropy graph, any later one), so every graph
of a bundle is converted the same way:
  * strict torch.export (full source traces, export/precision.py) with batch fixed to 1 and the other
    named axes as ct.RangeDim (a partial segment is a shorter `bytes`);
  * fp16 compute by default, with every Titans memory op kept fp32 by an op selector
    (ct.transform.FP16ComputePrecision(op_selector=...)); `precision="fp32"` keeps everything fp32;
  * state as explicit inputs/outputs (default, portable, fp32), or (`stateful=True`) every float state
    as a Core ML state (ct.StateType, iOS 18): the module keeps them in registered buffers updated in
    place, which torch.export records as buffer mutations and coremltools turns into states. Core ML
    stores states in fp16 only (coremltools: "State only support fp16 dtype"), so a stateful model
    carries the memory in fp16 between steps while still computing its update in fp32; explicit I/O
    is the variant whose state stays fp32. The int64 byte context stays explicit I/O (int32);
  * Xcode-visible metadata: author, license, version, short description, every input/output/state.
Core ML has no int64 I/O: integer tensors cross as int32 (runtimes/coreml.py converts).
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

import neat_edge
from neat_edge.errors import NeatError
from neat_edge.export.base import GraphSource, step_source
from neat_edge.export.precision import check_precision, in_memory_code, require_memory_ops, strict_program
from neat_edge.model.neat import NeatModel
from neat_edge.runtimes.coreml import import_coremltools
from neat_edge.spec import STATE_OUT, GraphSpec

AUTHOR, LICENSE = "NEAT-Edge", "Apache-2.0"
# The oldest targets that convert: ML programs with flexible (RangeDim) inputs exist since iOS 15 / macOS 12;
# Core ML states (ct.StateType) need iOS 18 / macOS 15.
EXPLICIT_TARGET, STATEFUL_TARGET = "iOS15", "iOS18"
FIXED_AXES = {"batch": 1}  # on-device streams are one at a time; Core ML states need fixed shapes


def coreml_name(name: str) -> str:
    """Core ML feature names are identifiers: state.memory.0.weight.0 -> state_memory_0_weight_0."""
    return re.sub(r"\W", "_", name)


@contextmanager
def _quiet_progress():
    """coremltools draws tqdm bars (on stderr) for every pass and prints numpy overflow warnings while
    folding fp16 constants (the -1e9 attention mask becomes -inf, as intended); the CLI shows its own
    status. tqdm picks sys.stderr when a bar starts, so redirecting it here is enough."""
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings(), np.errstate(over="ignore"):
        warnings.simplefilter("ignore")
        yield


class StatefulGraph(torch.nn.Module):
    """A GraphSource's module with its float state in registered buffers, updated in place (what
    coremltools converts to Core ML states); the other inputs and outputs are unchanged."""

    def __init__(self, source: GraphSource, held: list[str], batch_args: tuple):
        super().__init__()
        self.inner, self.spec = source.module, source.spec
        self.held = held
        for name in held:
            i = self.spec.input_names.index(name)
            self.register_buffer(coreml_name(name), batch_args[i].detach().clone().float())
        self.out_for = {o: i for i, o in self.spec.state}

    def forward(self, *inputs):
        it = iter(inputs)
        args = [getattr(self, coreml_name(n)) if n in self.held else next(it) for n in self.spec.input_names]
        outputs = self.inner(*args)
        kept = []
        for name, value in zip(self.spec.output_names, outputs):
            state_in = self.out_for.get(name)
            if state_in in self.held:
                buffer = getattr(self, coreml_name(state_in))
                buffer.copy_(value.reshape(buffer.shape))  # static shape: the state type is fixed
            else:
                kept.append(value)
        return tuple(kept)


def _fix_batch(source: GraphSource) -> tuple:
    """Example inputs with every batch axis cut to FIXED_AXES["batch"]."""
    args = []
    for t, a in zip(source.spec.inputs, source.args):
        for axis, name in t.dynamic_axes.items():
            if name in FIXED_AXES:
                a = a.narrow(axis, 0, FIXED_AXES[name])
        args.append(a)
    return tuple(args)


def _coreml_compatible(program):
    """Rewrite the two aten ops that torch 2.1x emits and coremltools 9 has no converter for:
    aten.alias (the identity) and aten.__and__ (on bool masks, logical_and)."""
    graph = program.graph_module.graph
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is torch.ops.aten.alias.default:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
        elif node.target is torch.ops.aten.__and__.Tensor:
            if any(getattr(a, "meta", {}).get("val") is not None and a.meta["val"].dtype != torch.bool
                   for a in node.args):
                raise NeatError("Core ML conversion: bitwise & on non-boolean tensors is not supported")
            node.target = torch.ops.aten.logical_and.default
    program.graph_module.recompile()
    return program


def _reduced_spec(spec: GraphSpec, held: list[str]) -> GraphSpec:
    outs = {o for i, o in spec.state if i in held}
    return GraphSpec(spec.name, tuple(t for t in spec.inputs if t.name not in held),
                     tuple(t for t in spec.outputs if t.name not in outs),
                     tuple((i, o) for i, o in spec.state if i not in held))


def _tensor_type(ct, t, axes: dict, output: bool = False):
    dtype = np.int32 if t.dtype.startswith("int") else np.float32
    if output:
        return ct.TensorType(name=coreml_name(t.name), dtype=dtype)
    shape = []
    for d in t.shape:
        if not isinstance(d, str):
            shape.append(d)
        elif d in FIXED_AXES:
            shape.append(FIXED_AXES[d])
        else:
            lo, opt, hi = axes[d]
            shape.append(ct.RangeDim(lower_bound=lo, upper_bound=hi, default=opt))
    return ct.TensorType(name=coreml_name(t.name), shape=shape, dtype=dtype)


def program_summary(mlspec) -> dict:
    """Op types and per-dtype op counts of an ML program, read from its (public) protobuf spec."""
    from coremltools.proto import MIL_pb2

    ops, dtypes = Counter(), Counter()
    for function in mlspec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                ops[op.type] += 1
                if op.type != "const":
                    for out in op.outputs:
                        if out.type.WhichOneof("type") == "tensorType":
                            dtypes[MIL_pb2.DataType.Name(out.type.tensorType.dataType).lower()] += 1
    return {"ops": dict(sorted(ops.items())), "op_output_dtypes": dict(sorted(dtypes.items()))}


class CoreMLTarget:
    name = "coreml"

    def __init__(self, precision: str = "fp16", stateful: bool = False):
        self.precision = check_precision(precision)
        self.stateful = stateful

    def build(self, model: NeatModel, spec: GraphSpec, out_dir: Path) -> dict:
        return self.build_graph(step_source(model, spec), out_dir)

    def build_graph(self, source: GraphSource, out_dir: Path) -> dict:
        ct = import_coremltools()
        spec = source.spec
        # Core ML states: the float inputs the graph hands back updated (its state pairs: the step graph's
        # state, a decode graph's caches); read-only inputs stay inputs
        paired = {i for i, _ in spec.state}
        held = [t.name for t in spec.inputs if self.stateful and t.name in paired and t.dtype == "float32"]
        batch_args = _fix_batch(source)
        if held:
            module = StatefulGraph(source, held, batch_args)
            io_spec = _reduced_spec(spec, held)
            args = tuple(a for t, a in zip(spec.inputs, batch_args) if t.name not in held)
            traced = GraphSource(source.stem, module, args, io_spec, source.axes, source.description)
        else:
            io_spec = spec
            traced = GraphSource(source.stem, source.module, batch_args, spec, source.axes, source.description)
        program = _coreml_compatible(strict_program(traced, fixed=FIXED_AXES, decompose=True))

        memory_ops = [0]

        def fp16_op(op) -> bool:  # True: this op computes in fp16
            from coremltools.converters.mil.mil.scope import ScopeSource

            traces = op.scopes.get(ScopeSource.EXIR_STACK_TRACE, [])
            if any(in_memory_code(t) for t in traces if t):
                memory_ops[0] += op.op_type != "const"
                return False
            return True

        if self.precision == "fp16":
            precision = ct.transform.FP16ComputePrecision(op_selector=fp16_op)
        else:
            precision = ct.precision.FLOAT32
        states = [ct.StateType(wrapped_type=ct.TensorType(
            shape=[FIXED_AXES.get(d, d) for d in t.shape], dtype=np.float16), name=coreml_name(t.name))
            for t in spec.inputs if t.name in held]
        pipeline = ct.PassPipeline.DEFAULT
        if held:  # coremltools 9.0's canonicalize_inplace_pattern indexes a stale op list once fp16 casts
            pipeline.remove_passes(["common::canonicalize_inplace_pattern"])  # are inserted; it only reorders
        target = STATEFUL_TARGET if held else EXPLICIT_TARGET
        try:
            with _quiet_progress():
                ml = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, target),
                                inputs=[_tensor_type(ct, t, source.axes) for t in io_spec.inputs],
                                outputs=[_tensor_type(ct, t, source.axes, output=True) for t in io_spec.outputs],
                                states=states or None, compute_precision=precision, pass_pipeline=pipeline)
        except NeatError:
            raise
        except Exception as exc:  # coremltools' messages can be long; keep the first line
            raise NeatError(f"Core ML conversion of graph '{spec.name}' failed: {str(exc).splitlines()[0]}") from exc
        if self.precision == "fp16":
            require_memory_ops(memory_ops[0], spec, "Core ML program")
        ml = self._describe(ct, ml, source, held)
        path = Path(out_dir) / f"{source.stem}.mlpackage"
        ml.save(str(path))
        return {"file": path.name, "target": self.name, "precision": self.precision, "stateful": bool(held),
                "minimum_deployment_target": target, "fixed_axes": dict(FIXED_AXES),
                "names": {t.name: coreml_name(t.name) for t in (*spec.inputs, *spec.outputs)},
                "states": held, "fp32_memory_ops": memory_ops[0] if self.precision == "fp16" else None,
                **program_summary(ml.get_spec())}

    def _describe(self, ct, ml, source: GraphSource, held: list[str]):
        """Metadata Xcode shows: author, license, version, summary and every feature's description."""
        mlspec = ml.get_spec()
        meta = mlspec.description.metadata
        meta.author, meta.license, meta.versionString = AUTHOR, LICENSE, neat_edge.__version__
        meta.shortDescription = source.description or f"NEAT-Edge graph '{source.spec.name}'"
        meta.userDefined.update({"neat.graph": source.spec.name, "neat.precision": self.precision,
                                 "neat.stateful": str(bool(held)).lower()})
        docs = {coreml_name(t.name): t for t in (*source.spec.inputs, *source.spec.outputs)}
        note = {"fp16": " Computed in fp16 except the Titans memory (fp32)."}.get(self.precision, "")
        for feature in (*mlspec.description.input, *mlspec.description.output, *mlspec.description.state):
            t = docs.get(feature.name)
            if t is None:
                raise NeatError(f"Core ML feature '{feature.name}' is not in the graph spec")
            shape = "×".join(str(FIXED_AXES.get(d, d)) for d in t.shape)
            where = " Held as a Core ML state (fp16 storage)." if t.name in held else ""
            dtype = "int32" if t.dtype.startswith("int") else "float32"
            feature.shortDescription = f"{t.doc} [{dtype} {shape}].{where}{note if t.name.startswith(STATE_OUT) else ''}"
        return ct.models.MLModel(mlspec, weights_dir=ml.weights_dir, skip_model_load=True)
