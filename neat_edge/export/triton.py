"""Triton target: a Triton Inference Server model repository for a bundle's step graph.

    DIR/neat_step/config.pbtxt          ONNX Runtime backend, sequence_batching with implicit state
    DIR/neat_step/1/model.onnx          the step graph, wrapped for Triton (below)
    DIR/neat_step/initial_state/*.bin   each state's initial value for one stream (raw, row-major)
    DIR/neat_step_trt/...               the same for the TensorRT backend (from a TensorRT bundle's ONNX);
                                        build_plan.sh builds 1/model.plan with trtexec on the serving GPU
    DIR/neat_triton.json                what the client needs (segment, patches, models) and the sizing

Triton keeps every state pair of the manifest as implicit state (`sequence_batching.state`): the output
state of a sequence's request i is its input state in request i + 1, and a sequence starts from
`initial_state` (data_file under the model's initial_state/ folder). The wrapped graph differs from the
bundle's by what Triton's contract needs:
- `svf_z` (one z for the whole batch, no batch axis) becomes a constant: the default z (all ones);
- `COMMIT` [batch, 1] int32: 1 keeps the step's next state, 0 returns the input state unchanged, so a
  trailing partial segment is scored without being committed (the Session's rule);
- `START` / `END` [batch, 1] int32 are the sequence batcher's control inputs; the graph returns them as
  `sequence_flags` so no backend prunes them (the state reset at START is Triton's own).
Every config is written as text and, where tritonclient is installed, parsed with Triton's model-config
protobuf and checked against the graph (export/triton_check.py).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from neat_edge.bundle import open_bundle
from neat_edge.errors import NeatError
from neat_edge.fileio import atomic_write_bytes, atomic_write_json
from neat_edge.spec import STATE_IN, GraphSpec

MODEL, TRT_MODEL, MANIFEST = "neat_step", "neat_step_trt", "neat_triton.json"
CONTROLS = ("START", "END")
COMMIT, FLAGS = "COMMIT", "sequence_flags"
TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64", "int32": "TYPE_INT32", "float16": "TYPE_FP16",
         "bool": "TYPE_BOOL"}
OUTPUTS = ("byte_logprobs", "image_logits", "dispatch_logits")


def wrap_step_graph(graph: onnx.ModelProto, spec: GraphSpec, svf_rank: int) -> onnx.ModelProto:
    """The bundle's step graph with Triton's inputs: svf_z constant, COMMIT selecting the next state,
    START / END passed through as sequence_flags (module docstring)."""
    m = onnx.ModelProto()
    m.CopyFrom(graph)
    g = m.graph
    if any(i.name == "svf_z" for i in g.input):
        keep = [i for i in g.input if i.name != "svf_z"]
        del g.input[:]
        g.input.extend(keep)
        g.initializer.append(numpy_helper.from_array(np.ones(svf_rank, np.float32), "svf_z"))
    for name in (*CONTROLS, COMMIT):
        g.input.append(helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", 1]))
    nodes = [helper.make_node("Cast", [COMMIT], ["triton/commit"], to=TensorProto.BOOL)]
    ranks = {t.name: len(t.shape) for t in spec.inputs}
    graph_inputs = {i.name for i in g.input}
    for state_in, state_out in spec.state:
        if state_in not in graph_inputs:
            raise NeatError(f"the step graph has no input '{state_in}' for its state output '{state_out}'")
        raw = f"triton/{state_out}"
        for node in g.node:  # the producer (and any consumer) of the output now use the raw name
            node.output[:] = [raw if o == state_out else o for o in node.output]
            node.input[:] = [raw if i == state_out else i for i in node.input]
        shape = numpy_helper.from_array(np.array([-1] + [1] * (ranks[state_in] - 1), np.int64), f"triton/shape/{state_in}")
        nodes += [helper.make_node("Constant", [], [f"triton/shape/{state_in}"], value=shape),
                  helper.make_node("Reshape", ["triton/commit", f"triton/shape/{state_in}"], [f"triton/commit/{state_in}"]),
                  helper.make_node("Where", [f"triton/commit/{state_in}", raw, state_in], [state_out])]
    nodes.append(helper.make_node("Concat", list(CONTROLS), [FLAGS], axis=1))
    g.node.extend(nodes)
    g.output.append(helper.make_tensor_value_info(FLAGS, TensorProto.INT32, ["batch", 2]))
    onnx.checker.check_model(m)
    return m


def _dims(shape) -> str:
    return "[ " + ", ".join("-1" if isinstance(d, str) else str(int(d)) for d in shape[1:]) + " ]"


def _tensor(t, kind: str = "input") -> str:
    return f'  {{ name: "{t.name}" data_type: {TYPES[t.dtype]} dims: {_dims(t.shape)} }}'


def model_config(name: str, spec: GraphSpec, backend: str, max_batch: int, instances: int, idle_seconds: float,
                 candidates: int) -> str:
    """config.pbtxt of the step graph on `backend` (onnxruntime | tensorrt)."""
    states = {i for i, _ in spec.state}
    inputs = [t for t in spec.inputs if t.name not in states and t.name != "svf_z"]
    outputs = [t for t in spec.outputs if t.name in OUTPUTS]
    by_name = {t.name: t for t in spec.inputs}
    head = [f'name: "{name}"']
    if backend == "tensorrt":
        head += ['platform: "tensorrt_plan"', 'backend: "tensorrt"', 'default_model_filename: "model.plan"']
    else:
        head += ['backend: "onnxruntime"', 'default_model_filename: "model.onnx"']
    head.append(f"max_batch_size: {max_batch}")
    lines = [*head, "input ["]
    lines.append(",\n".join([*(_tensor(t) for t in inputs),
                             f'  {{ name: "{COMMIT}" data_type: TYPE_INT32 dims: [ 1 ] }}']))
    lines += ["]", "output ["]
    lines.append(",\n".join([*(_tensor(t) for t in outputs),
                             f'  {{ name: "{FLAGS}" data_type: TYPE_INT32 dims: [ 2 ] }}']))
    lines += ["]", "sequence_batching {", f"  max_sequence_idle_microseconds: {int(idle_seconds * 1e6)}",
              f"  oldest {{ max_candidate_sequences: {candidates} preferred_batch_size: [ {max_batch} ] "
              "max_queue_delay_microseconds: 500 }", "  control_input ["]
    kinds = {"START": "CONTROL_SEQUENCE_START", "END": "CONTROL_SEQUENCE_END"}
    lines.append(",\n".join(f'    {{ name: "{c}" control [ {{ kind: {kinds[c]} int32_false_true: [ 0, 1 ] }} ] }}'
                            for c in CONTROLS))
    lines += ["  ]", "  state ["]
    blocks = []
    for state_in, state_out in spec.state:
        t = by_name[state_in]
        blocks.append(f'    {{\n      input_name: "{state_in}"\n      output_name: "{state_out}"\n'
                      f"      data_type: {TYPES[t.dtype]}\n      dims: {_dims(t.shape)}\n"
                      f'      initial_state {{ name: "{state_in[len(STATE_IN):]}" data_type: {TYPES[t.dtype]} '
                      f'dims: {_dims(t.shape)} data_file: "{state_in}.bin" }}\n    }}')
    lines += [",\n".join(blocks), "  ]", "}",
              f"instance_group [ {{ count: {instances} kind: KIND_GPU }} ]"]
    return "\n".join(lines) + "\n"


def _write_model(out: Path, name: str, wrapped: onnx.ModelProto, spec: GraphSpec, initial: dict[str, np.ndarray],
                 backend: str, options: dict) -> dict:
    model_dir = out / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx_name = "1/model.onnx" if backend == "onnxruntime" else "model.onnx"
    atomic_write_bytes(model_dir / onnx_name, wrapped.SerializeToString())
    for state_in, _ in spec.state:
        value = np.ascontiguousarray(initial[state_in[len(STATE_IN):]][0])  # one stream, row-major, little-endian
        raw = value.astype(value.dtype.newbyteorder("<")).tobytes()
        atomic_write_bytes(model_dir / "initial_state" / f"{state_in}.bin", raw)
    atomic_write_bytes(model_dir / "config.pbtxt", model_config(name, spec, backend, **options).encode())
    entry = {"name": name, "backend": backend, "graph": onnx_name}
    if backend == "tensorrt":
        atomic_write_bytes(model_dir / "build_plan.sh", plan_recipe(spec, options["max_batch"]).encode())
        entry["plan"] = "1/model.plan (not built here: bash build_plan.sh on the serving GPU, Triton's TensorRT version)"
    return entry


def plan_recipe(spec: GraphSpec, max_batch: int, segment: int | None = None) -> str:
    """trtexec command building 1/model.plan from model.onnx: batch 1..max_batch, one profile."""
    states = {i for i, _ in spec.state}
    shapes = {"min": [], "opt": [], "max": []}
    for t in spec.inputs:
        if t.name == "svf_z":
            continue
        fixed = [str(d) for d in t.shape[1:] if not isinstance(d, str)]
        dyn = [d for d in t.shape[1:] if isinstance(d, str)]
        for key, batch in (("min", 1), ("opt", max_batch), ("max", max_batch)):
            sizes = {"segment": ("1", "${SEGMENT}", "${SEGMENT}"), "patches": ("1", "${PATCHES}", "${PATCHES}")}
            idx = {"min": 0, "opt": 1, "max": 2}[key]
            dims = [str(batch), *(sizes[d][idx] for d in dyn), *fixed] if t.name not in states else \
                [str(batch), *fixed]
            shapes[key].append(f"{t.name}:{'x'.join(dims)}")
    for name in (*CONTROLS, COMMIT):
        for key, batch in (("min", 1), ("opt", max_batch), ("max", max_batch)):
            shapes[key].append(f"{name}:{batch}x1")
    return ("#!/usr/bin/env bash\n# Builds 1/model.plan for Triton's TensorRT backend: run on the serving GPU with the\n"
            "# TensorRT version of the Triton release that will serve it (plans are not portable across versions).\n"
            "set -euo pipefail\ncd \"$(dirname \"$0\")\"\nSEGMENT=${SEGMENT:?the bundle's segment_len}\n"
            "PATCHES=${PATCHES:?the most patches a segment holds}\nmkdir -p 1\n"
            "trtexec --onnx=model.onnx --saveEngine=1/model.plan --stronglyTyped \\\n"
            + "".join(f"  --{k}Shapes={','.join(v)} \\\n" for k, v in shapes.items()) + "  --skipInference\n")


def write_repository(bundle_path: str | Path, out: str | Path, max_batch: int = 8, instances: int = 2,
                     idle_seconds: float = 600.0, candidates: int = 256) -> dict:
    """The Triton model repository of a bundle: neat_step (ONNX Runtime) and, when the bundle holds a
    TensorRT graph, neat_step_trt. Written into a staging folder, checked, then moved into place."""
    bundle = open_bundle(bundle_path)
    cfg, out = bundle.config, Path(out)
    if bundle.patching.get("kind", "fixed") != "fixed":
        raise NeatError("the Triton repository serves fixed-patch bundles (entropy patching needs the entropy "
                        "graph's stream state too); this bundle uses entropy patching")
    if out.exists() and any(out.iterdir()):
        raise NeatError(f"{out} exists and is not empty")
    initial = bundle.initial_state()
    options = dict(max_batch=max_batch, instances=instances, idle_seconds=idle_seconds, candidates=candidates)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    try:
        path, spec = bundle.graph("onnx")
        rank = next(t.shape[0] for t in spec.inputs if t.name == "svf_z")
        models = [_write_model(staging, MODEL, wrap_step_graph(onnx.load(str(path)), spec, rank), spec, initial,
                               "onnxruntime", options)]
        skipped = {}
        if "tensorrt" in bundle.manifest["graphs"]:
            entry = bundle.manifest["graphs"]["tensorrt"]
            trt_onnx = bundle.path / entry.get("onnx", entry["file"])
            trt_spec = GraphSpec.from_dict(entry) if "inputs" in entry else spec
            models.append(_write_model(staging, TRT_MODEL, wrap_step_graph(onnx.load(str(trt_onnx)), trt_spec, rank),
                                       trt_spec, initial, "tensorrt", options))
        else:
            skipped[TRT_MODEL] = "the bundle has no TensorRT graph (neat-export --target tensorrt)"
        state_bytes = int(sum(v[0].nbytes for k, v in initial.items() if STATE_IN + k in dict(spec.state)))
        manifest = {"format": "neat-triton/1", "bundle_fingerprint": bundle.manifest.get("fingerprint"),
                    "segment_len": cfg.segment_len, "patch_size": cfg.patch_size, "vocab_size": cfg.vocab_size,
                    "models": models, "skipped": skipped, "states": [
                        {"input": i, "output": o, "bytes_per_stream": int(initial[i[len(STATE_IN):]][0].nbytes)}
                        for i, o in spec.state],
                    "sizing": {"state_bytes_per_stream": state_bytes, "max_batch_size": max_batch,
                               "instances": instances, "max_candidate_sequences": candidates,
                               "max_sequence_idle_seconds": idle_seconds},
                    "served_on_triton_here": False}
        atomic_write_json(staging / MANIFEST, manifest)
        check = _check(staging)
        if check is not None:
            manifest["checked"] = check
            atomic_write_json(staging / MANIFEST, manifest)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _check(repo: Path) -> dict | None:
    """Parse every config with Triton's protobuf and check it against its graph, where tritonclient is."""
    try:
        import tritonclient.grpc.model_config_pb2  # noqa: F401
    except ImportError:
        return None
    from neat_edge.export.triton_check import check_repository

    return check_repository(repo)


class TritonTarget:
    """`neat-export --target triton`: the ONNX target's step graph, then a Triton repository around it
    (build / build_graph as every target; the repository itself is write_repository of the bundle)."""

    name, precision = "triton", "fp32"

    def build(self, model, spec: GraphSpec, out_dir: Path) -> dict:
        from neat_edge.export.base import step_source

        return self.build_graph(step_source(model, spec), out_dir)

    def build_graph(self, source, out_dir: Path) -> dict:
        from neat_edge.export.onnx import OnnxTarget

        entry = OnnxTarget().build_graph(source, out_dir)
        return {**entry, "target": "onnx", "triton": "neat-export --target triton writes the repository"}
