"""An in-process stand-in for a Triton Inference Server serving a repository written by export/triton.py:
Triton's documented implicit-state semantics applied to ONNX Runtime, behind the streaming part of
tritonclient.grpc.InferenceServerClient (start_stream / async_stream_infer / stop_stream), so the client's
real request sequence (tritonclient InferInput objects, sequence ids and flags) can be tested where no
Triton server can be installed. It is not Triton: no batching across sequences, no scheduling, one model.

Semantics applied (Triton's implicit state management and sequence batcher docs):
- every request of a sequence model carries a non-zero sequence_id; the first request of a sequence must
  set sequence_start, which (re)initialises its state from `initial_state` (data_file under the model's
  initial_state/ folder; zeros where none) and sets the START control input to its true value;
- each state's input tensor is the state output of the sequence's previous request (output_name ->
  input_name), never sent by the client; a request with sequence_end sets END and releases the state;
- inputs must be the config's inputs with its data types and dims (batch axis first, -1 any size);
  only outputs listed in the config come back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from neat_edge.errors import NeatError
from neat_edge.export.triton_check import parse_config

NUMPY = {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64, "TYPE_INT32": np.int32, "TYPE_FP16": np.float16,
         "TYPE_BOOL": np.bool_}
WIRE = {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32, "FP16": np.float16, "BOOL": np.bool_}


class TritonStandIn:
    """One model of a repository, served as the stand-in described above."""

    def __init__(self, repository: str | Path, model: str = "neat_step"):
        from tritonclient.grpc import model_config_pb2 as pb

        self.dir = Path(repository) / model
        self.config = parse_config(self.dir / "config.pbtxt")
        self.name = self.config.name
        self.session = ort.InferenceSession(str(self.dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        type_name = pb.DataType.Name
        self.inputs = {t.name: (NUMPY[type_name(t.data_type)], list(t.dims)) for t in self.config.input}
        self.outputs = [t.name for t in self.config.output]
        seq = self.config.sequence_batching
        self.controls = {}
        for c in seq.control_input:
            kind = c.control[0]
            self.controls[c.name] = (pb.ModelSequenceBatching.Control.Kind.Name(kind.kind),
                                     list(kind.int32_false_true))
        self.initial, self.state_pairs = {}, []
        for s in seq.state:
            self.state_pairs.append((s.input_name, s.output_name))
            dtype = NUMPY[type_name(s.data_type)]
            if s.initial_state and s.initial_state[0].data_file:
                init = s.initial_state[0]
                raw = (self.dir / "initial_state" / init.data_file).read_bytes()
                value = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
                self.initial[s.input_name] = value.reshape(list(init.dims))
            else:
                self.initial[s.input_name] = np.zeros(list(s.dims), dtype)
        self.sequences: dict[int, dict[str, np.ndarray]] = {}

    def client(self) -> StandInClient:
        """A new connection (as one tritonclient.grpc.InferenceServerClient, with its own stream)."""
        return StandInClient(self)

    # --- the server side ---------------------------------------------------------------------------------
    def infer(self, model_name, inputs, outputs, request_id, sequence_id, sequence_start, sequence_end):
        from tritonclient.grpc import InferResult, service_pb2

        if model_name != self.name:
            raise NeatError(f"unknown model '{model_name}' (this stand-in serves '{self.name}')")
        if not sequence_id:
            raise NeatError(f"inference request to model '{self.name}' must specify a non-zero sequence id")
        if sequence_start:
            self.sequences[sequence_id] = {k: v[None].copy() for k, v in self.initial.items()}
        if sequence_id not in self.sequences:
            raise NeatError(f"inference request for sequence {sequence_id} to model '{self.name}' must specify the "
                            "START flag on the first request of the sequence")
        feeds = self._decode(inputs)
        for name, (kind, false_true) in self.controls.items():
            flag = {"CONTROL_SEQUENCE_START": sequence_start, "CONTROL_SEQUENCE_END": sequence_end}.get(kind, False)
            feeds[name] = np.full((1, 1), false_true[1] if flag else false_true[0], np.int32)
        state = self.sequences[sequence_id]
        feeds.update(state)
        wanted = [o.name() if hasattr(o, "name") else o for o in outputs] if outputs else self.outputs
        unknown = set(wanted) - set(self.outputs)
        if unknown:
            raise NeatError(f"unexpected inference output(s) {', '.join(sorted(unknown))} for model '{self.name}'")
        names = [*wanted, *(o for _, o in self.state_pairs)]
        values = dict(zip(names, self.session.run(names, feeds)))
        if sequence_end:
            del self.sequences[sequence_id]
        else:
            for i, o in self.state_pairs:
                state[i] = values[o]
        response = service_pb2.ModelInferResponse(model_name=self.name, model_version="1", id=request_id)
        for name in wanted:
            value = np.ascontiguousarray(values[name])
            wire = next(k for k, v in WIRE.items() if v == value.dtype.type)
            response.outputs.add(name=name, datatype=wire, shape=list(value.shape))
            response.raw_output_contents.append(value.tobytes())
        return InferResult(response)

    def _decode(self, inputs) -> dict[str, np.ndarray]:
        feeds = {}
        for inp in inputs:
            name = inp.name()
            if name not in self.inputs:
                raise NeatError(f"unexpected inference input '{name}' for model '{self.name}'")
            dtype, dims = self.inputs[name]
            if WIRE.get(inp.datatype()) is not dtype:
                raise NeatError(f"input '{name}': data type {inp.datatype()}, model expects {dtype.__name__}")
            shape = list(inp.shape())
            if len(shape) != len(dims) + 1 or any(d not in (-1, s) for d, s in zip(dims, shape[1:])):
                raise NeatError(f"input '{name}': shape {shape}, model expects [batch, {dims}]")
            if shape[0] > max(self.config.max_batch_size, 1):
                raise NeatError(f"input '{name}': batch {shape[0]} > max_batch_size {self.config.max_batch_size}")
            feeds[name] = np.frombuffer(inp._get_content(), dtype=dtype).reshape(shape)
        missing = set(self.inputs) - set(feeds)
        if missing:
            raise NeatError(f"expected inputs {', '.join(sorted(missing))} for model '{self.name}'")
        return feeds


class StandInClient:
    """tritonclient.grpc.InferenceServerClient's streaming surface over a TritonStandIn: each client has its
    own stream (callback), all share the server's sequences."""

    def __init__(self, server: TritonStandIn):
        self.server, self._callback = server, None

    def start_stream(self, callback, stream_timeout=None, headers=None, compression_algorithm=None):
        self._callback = callback

    def stop_stream(self, cancel_requests: bool = False):
        self._callback = None

    def async_stream_infer(self, model_name, inputs, model_version="", outputs=None, request_id="", sequence_id=0,
                           sequence_start=False, sequence_end=False, **_):
        from tritonclient.utils import InferenceServerException

        if self._callback is None:
            raise NeatError("async_stream_infer before start_stream")
        try:
            result = self.server.infer(model_name, inputs, outputs, request_id, sequence_id, sequence_start,
                                       sequence_end)
        except NeatError as exc:
            self._callback(None, InferenceServerException(str(exc)))
            return
        self._callback(result, None)
