"""Checks of a Triton model repository written by export/triton.py, with Triton's own model-config protobuf
(tritonclient.grpc.model_config_pb2): every config.pbtxt parses, its inputs, control inputs and state
inputs are exactly the graph's inputs, its outputs and state outputs are graph outputs, each state's data
type and dims are the graph's (batch axis aside, named axes as -1), and each initial_state data file holds
exactly dims × element size bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from neat_edge.errors import NeatError

ONNX_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64",
              onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
              onnx.TensorProto.BOOL: "TYPE_BOOL"}
ITEMSIZE = {"TYPE_FP32": 4, "TYPE_INT64": 8, "TYPE_INT32": 4, "TYPE_FP16": 2, "TYPE_BOOL": 1}


def parse_config(path: Path):
    """config.pbtxt -> tritonclient's ModelConfig message (NeatError if it does not parse)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise NeatError(f"{path} is not a valid Triton model config: {exc}") from None


def graph_signature(model: onnx.ModelProto) -> tuple[dict, dict]:
    """({input: (triton type, dims after batch)}, {output: ...}) of an ONNX graph; named axes are -1."""
    def sig(values):
        out = {}
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            out[v.name] = (ONNX_TYPES.get(t.elem_type, str(t.elem_type)), dims[1:])
        return out

    inits = {i.name for i in model.graph.initializer}
    return sig(v for v in model.graph.input if v.name not in inits), sig(model.graph.output)


def check_model(model_dir: Path, graph: onnx.ModelProto) -> dict:
    from tritonclient.grpc import model_config_pb2 as pb

    cfg = parse_config(model_dir / "config.pbtxt")
    name = model_dir.name
    if cfg.name != name:
        raise NeatError(f"{name}/config.pbtxt names the model '{cfg.name}'")
    ins, outs = graph_signature(graph)
    problems = []

    def same(where, tname, dtype, dims, table):
        if tname not in table:
            problems.append(f"{where} '{tname}' is not in the graph")
        elif table[tname] != (pb.DataType.Name(dtype), list(dims)):
            problems.append(f"{where} '{tname}': config {pb.DataType.Name(dtype)} {list(dims)}, graph {table[tname]}")

    declared = set()
    for t in cfg.input:
        same("input", t.name, t.data_type, t.dims, ins)
        declared.add(t.name)
    for t in cfg.output:
        same("output", t.name, t.data_type, t.dims, outs)
    seq = cfg.sequence_batching
    for c in seq.control_input:
        kind = c.control[0]
        same("control input", c.name, kind.data_type or pb.TYPE_INT32, [1], ins)
        declared.add(c.name)
    for s in seq.state:
        same("state input", s.input_name, s.data_type, s.dims, ins)
        same("state output", s.output_name, s.data_type, s.dims, outs)
        declared.add(s.input_name)
        for init in s.initial_state:
            data = model_dir / "initial_state" / init.data_file
            want = int(np.prod(list(init.dims))) * ITEMSIZE[pb.DataType.Name(init.data_type)]
            if not data.is_file() or data.stat().st_size != want:
                problems.append(f"initial state {init.data_file}: expected {want} bytes")
            if list(init.dims) != list(s.dims) or init.data_type != s.data_type:
                problems.append(f"initial state of '{s.input_name}' differs from the state's type or dims")
    missing = set(ins) - declared
    if missing:
        problems.append(f"graph inputs fed by nobody: {', '.join(sorted(missing))}")
    if problems:
        raise NeatError(f"{name}: " + "; ".join(problems))
    return {"inputs": len(cfg.input), "control_inputs": len(seq.control_input), "states": len(seq.state),
            "outputs": len(cfg.output), "backend": cfg.backend, "max_batch_size": cfg.max_batch_size}


def check_repository(repo: str | Path) -> dict:
    """Every model of the repository checked (check_model); NeatError on the first model that fails."""
    repo, report = Path(repo), {}
    for model_dir in sorted(p for p in repo.iterdir() if (p / "config.pbtxt").is_file()):
        onnx_path = model_dir / "1" / "model.onnx"
        if not onnx_path.is_file():
            onnx_path = model_dir / "model.onnx"
        report[model_dir.name] = check_model(model_dir, onnx.load(str(onnx_path)))
    if not report:
        raise NeatError(f"{repo} holds no Triton model (no */config.pbtxt)")
    return {"parsed_with": "tritonclient.grpc.model_config_pb2", "models": report}
