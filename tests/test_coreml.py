"""Core ML target: conversion of the tiny default (explicit-I/O and stateful) checked on its spec here;
numeric parity runs only where Core ML predicts (macOS, marked `coreml`)."""

import sys

import numpy as np
import pytest

ct = pytest.importorskip("coremltools", reason="coremltools is not installed (pip install -e '.[coreml]')")

from neat_edge.bundle import open_bundle  # noqa: E402
from neat_edge.errors import NeatError  # noqa: E402
from neat_edge.export.coreml import CoreMLTarget, coreml_name  # noqa: E402
from neat_edge.spec import STATE_IN, step_spec  # noqa: E402

ON_MAC = sys.platform == "darwin"
STATEFUL_TOL = 5e-3  # fp16 state storage: measured 4e-4 over 6 segments
FP16, FP32, INT32 = (ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Value(n)
                     for n in ("FLOAT16", "FLOAT32", "INT32"))


def _export(model, out, stateful):
    from neat_edge.export.pipeline import export_bundle

    export_bundle(model, out, ("coreml",), verify=False, log=lambda *_: None, stateful=stateful)
    bundle = open_bundle(out)
    entry = bundle.manifest["graphs"]["coreml"]
    return bundle, entry, ct.models.MLModel(str(out / entry["file"]), skip_model_load=True).get_spec()


@pytest.fixture(scope="module")
def explicit(tmp_path_factory, model):
    return _export(model, tmp_path_factory.mktemp("coreml") / "explicit", stateful=False)


@pytest.fixture(scope="module")
def stateful(tmp_path_factory, model):
    return _export(model, tmp_path_factory.mktemp("coreml") / "stateful", stateful=True)


class Program:
    """The ML program's main block from the protobuf spec: who produces and who consumes each value."""

    def __init__(self, mlspec):
        block = mlspec.mlProgram.functions["main"].block_specializations
        self.ops = list(next(iter(block.values())).operations)
        self.producer = {o.name: op for op in self.ops for o in op.outputs}
        self.consumers = {}
        for op in self.ops:
            for arg in op.inputs.values():
                for a in arg.arguments:
                    if a.HasField("name"):
                        self.consumers.setdefault(a.name, []).append(op)

    @staticmethod
    def dtype(op, i=0):
        return ct.proto.MIL_pb2.DataType.Name(op.outputs[i].type.tensorType.dataType)

    def source(self, op, arg):
        return self.producer[op.inputs[arg].arguments[0].name]


def _memory_names(spec, prefix="state."):
    return [n for n in spec.input_names if n.startswith(prefix + "memory.") and (".weight." in n or ".momentum." in n)]


def test_explicit_io_spec_dtypes_and_metadata(explicit, model):
    bundle, entry, mlspec = explicit
    spec = step_spec(model)
    d = mlspec.description
    assert [f.name for f in d.input] == [coreml_name(n) for n in spec.input_names]
    assert [f.name for f in d.output] == [coreml_name(n) for n in spec.output_names]
    assert not d.state and entry["stateful"] is False and entry["minimum_deployment_target"] == "iOS15"
    types = {f.name: f.type.multiArrayType for f in (*d.input, *d.output)}
    for t in (*spec.inputs, *spec.outputs):  # Core ML has no int64: integers cross as int32
        assert types[coreml_name(t.name)].dataType == (INT32 if t.dtype == "int64" else FP32), t.name
    seg = bundle.config.segment_len
    bytes_range = types["bytes"].shapeRange.sizeRanges
    assert [(r.lowerBound, r.upperBound) for r in bytes_range] == [(1, 1), (1, seg)]  # batch 1, any segment length
    meta = d.metadata
    assert meta.author and meta.license == "Apache-2.0" and meta.versionString and "segment" in meta.shortDescription
    assert all(f.shortDescription for f in (*d.input, *d.output))
    assert entry["names"]["state.memory.0.weight.0"] == "state_memory_0_weight_0"


def test_explicit_fp16_keeps_memory_fp32(explicit, model):
    _, entry, mlspec = explicit
    spec = step_spec(model)
    assert entry["precision"] == "fp16" and entry["fp32_memory_ops"] > 100
    assert entry["op_output_dtypes"]["float16"] > 100 and entry["op_output_dtypes"]["float32"] > 100
    assert not {"while_loop", "cond"} & set(entry["ops"])
    prog = Program(mlspec)
    for name in _memory_names(spec):  # the memory update is computed fp32: its result is no fp16 cast
        op = prog.producer[coreml_name("next_" + name)]
        assert op.type != "cast" and Program.dtype(op) == "FLOAT32", (name, op.type)
        assert not any(c.type == "cast" for c in prog.consumers[coreml_name(name)]), name  # read fp32
    head = prog.producer["byte_logprobs"]  # ... while the rest of the graph runs fp16
    assert head.type == "cast" and Program.dtype(prog.source(head, "x")) == "FLOAT16"


def test_stateful_states_and_fp32_update(stateful, model):
    _, entry, mlspec = stateful
    spec = step_spec(model)
    d = mlspec.description
    held = [t for t in spec.inputs if t.name.startswith(STATE_IN) and t.dtype == "float32"]
    assert entry["stateful"] and entry["minimum_deployment_target"] == "iOS18"
    assert entry["states"] == [t.name for t in held]
    states = {s.name: s.type.stateType.arrayType for s in d.state}
    assert set(states) == {coreml_name(t.name) for t in held}
    for t in held:  # Core ML states are fp16 storage with the graph's fixed shape, batch 1
        assert states[coreml_name(t.name)].dataType == FP16
        assert list(states[coreml_name(t.name)].shape) == [1, *t.shape[1:]]
    assert [f.name for f in d.input] == ["bytes", "patch_ids", "patch_mask", "svf_z", "state_byte_context"]
    assert [f.name for f in d.output] == ["byte_logprobs", "image_logits", "dispatch_logits", "next_state_byte_context"]
    prog = Program(mlspec)
    writes = {op.inputs["input"].arguments[0].name: op for op in prog.ops if op.type == "write_state"}
    assert len(writes) == len(held)
    for name in _memory_names(spec):  # written through one fp32 -> fp16 cast of an fp32 result
        cast = prog.source(writes[coreml_name(name)], "data")
        while cast.type == "reshape":  # the state's static shape (StatefulGraph)
            cast = prog.source(cast, "x")
        assert cast.type == "cast" and Program.dtype(cast) == "FLOAT16"
        update = prog.source(cast, "x")
        assert update.type != "cast" and Program.dtype(update) == "FLOAT32", (name, update.type)


def test_entropy_graph_converts_the_same_way_fp32(tmp_path):
    from neat_edge.export.base import entropy_source
    from neat_edge.model.entropy import EntropyConfig, build_entropy_model

    source = entropy_source(build_entropy_model(EntropyConfig(context_len=16, segment_len=32, dim=32, layers=1, heads=2)))
    entry = CoreMLTarget("fp32").build_graph(source, tmp_path)
    assert entry["file"] == "entropy.mlpackage" and entry["precision"] == "fp32"
    assert "float16" not in entry["op_output_dtypes"]
    d = ct.models.MLModel(str(tmp_path / entry["file"]), skip_model_load=True).get_spec().description
    assert [f.name for f in d.input] == ["bytes", "state_byte_context"]
    assert [f.name for f in d.output] == ["byte_logprobs", "entropy", "next_state_byte_context"]
    assert "entropy" in d.metadata.shortDescription


def test_bad_precision_is_a_clear_error():
    with pytest.raises(NeatError, match="unknown precision"):
        CoreMLTarget("int4")


class FakeMLModel:
    """Stands in for MLModel.predict off macOS: runs the same PyTorch step, fed and read through the
    Core ML names, dtypes and (fp16) states that the converted model declares."""

    def __init__(self, model, entry, module=None, spec=None):
        import torch

        from neat_edge.model.graphs import StepModule

        self.torch, self.spec = torch, spec or step_spec(model)
        self.module, self.entry = (module or StepModule(model, self.spec)).eval(), entry

    def make_state(self):
        self.written = []
        written = self.written

        class State(dict):
            def write_state(self, name, value):
                assert value.dtype == np.float16
                written.append(name)
                self[name] = value.copy()

            def read_state(self, name):
                return self[name].copy()

        return State()

    def predict(self, inputs, state=None):
        names = self.entry["names"]
        args = []
        for t in self.spec.inputs:
            if t.name in self.entry["states"]:
                value = state[names[t.name]].astype(np.float32)
            else:
                value = inputs[names[t.name]]
                assert value.dtype == (np.int32 if t.dtype == "int64" else np.float32)
                value = value.astype(t.dtype)
            args.append(self.torch.from_numpy(np.ascontiguousarray(value)))
        with self.torch.no_grad():
            outs = self.module(*args)
        result = {}
        for t, v in zip(self.spec.outputs, outs):
            state_in = next((i for i, o in self.spec.state if o == t.name), None)
            if state_in in self.entry["states"]:
                state[names[state_in]] = v.numpy().astype(np.float16)
            else:
                result[names[t.name]] = v.numpy().astype(np.int32 if t.dtype == "int64" else np.float32)
        return result


@pytest.mark.parametrize("variant", ["explicit", "stateful"])
def test_backend_names_dtypes_and_state_handling(variant, request, model, corpus):
    """CoreMLBackend's side of the contract (names, int32/fp16 conversions, MLState writes only when
    the session's state is not what the backend last returned), through the real Session."""
    from neat_edge.export.verify import parity_report
    from neat_edge.runtimes import open_model_session
    from neat_edge.runtimes.coreml import CoreMLBackend
    from neat_edge.runtimes.session import Session

    bundle, entry, _ = request.getfixturevalue(variant)
    fake = FakeMLModel(model, entry)
    session = Session(CoreMLBackend(bundle.path / entry["file"], step_spec(model), entry, model=fake),
                      bundle.config, bundle.initial_state())
    reference = open_model_session(model)
    seg = bundle.config.segment_len
    data = corpus[: 6 * seg + 50]  # a partial last segment: scored, not committed
    r = parity_report(reference, {"coreml": session}, data)["backends"]["coreml"]
    tol = 1e-5 if not entry["states"] else STATEFUL_TOL  # the stateful variant stores its state in fp16
    assert r["max_abs_logprob_diff"] <= tol and r["top1_agreement"] >= 0.99
    held = len(entry["states"])
    if held:  # written once at the start; committed steps leave the MLState as it is
        assert len(fake.written) == held
    more = corpus[len(data): len(data) + seg]
    np.testing.assert_allclose(session.score(more), reference.score(more), atol=tol)
    if held:  # the partial segment's state was not committed: the session's state is written back
        assert len(fake.written) == 2 * held


@pytest.mark.coreml
@pytest.mark.skipif(not ON_MAC, reason="Core ML predicts only on macOS (coremltools cannot load models elsewhere)")
@pytest.mark.parametrize("variant", ["explicit", "stateful"])
def test_coreml_parity_on_device(variant, request, corpus):
    from neat_edge.export.verify import parity_report
    from neat_edge.runtimes import open_session

    bundle, _, _ = request.getfixturevalue(variant)
    data = corpus[: 32 * bundle.config.segment_len]
    report = parity_report(open_session(bundle.path, "torch"), {"coreml": open_session(bundle.path, "coreml")}, data)
    r = report["backends"]["coreml"]
    assert abs(r["bits_per_byte"] - report["reference"]["bits_per_byte"]) <= 0.01
    assert r["top1_agreement"] >= 0.99


@pytest.mark.skipif(ON_MAC, reason="checks the off-macOS error")
def test_coreml_backend_off_macos_is_one_clear_error(explicit):
    from neat_edge.runtimes import open_session

    bundle, _, _ = explicit
    with pytest.raises(NeatError, match="only on macOS"):
        open_session(bundle.path, "coreml")


@pytest.mark.parametrize("variant", ["explicit", "stateful"])
def test_decode_graphs_convert_and_generate_through_the_backend(variant, request, model):
    """Every decode graph converts (explicit I/O; stateful: each cache pair a Core ML state, iOS 18), and
    generation runs through CoreMLBackend's names, int32 and fp16-state handling with the real Decoder
    (each converted graph's computation stood in for by its PyTorch module off macOS)."""
    from neat_edge.model.graphs import DecodeGraph, DecodeSvfGraph, ImageHeadGraph
    from neat_edge.runtimes import open_model_session
    from neat_edge.runtimes.coreml import CoreMLBackend
    from neat_edge.runtimes.decoding import DecodeGraphs
    from neat_edge.spec import GraphSpec

    bundle, _, _ = request.getfixturevalue(variant)
    entries = bundle.manifest["decode"]["graphs"]["coreml"]
    assert {"decode_start", "decode_byte", "decode_patch", "decode_commit", "decode_svf"} <= set(entries)
    graphs = {}
    for name, entry in entries.items():
        spec = GraphSpec.from_dict(entry)
        mlspec = ct.models.MLModel(str(bundle.path / entry["file"]), skip_model_load=True).get_spec()
        held = set(entry["states"])
        assert {f.name for f in mlspec.description.input} == {coreml_name(n) for n in spec.input_names if n not in held}
        assert {f.name for f in mlspec.description.state} == {coreml_name(n) for n in held}
        if variant == "stateful" and name in ("decode_byte", "decode_patch"):  # every float cache pair
            dtypes = {t.name: t.dtype for t in spec.inputs}
            assert held == {i for i, _ in spec.state if dtypes[i] == "float32"}
            assert entry["minimum_deployment_target"] == "iOS18"
        module = {"decode_svf": DecodeSvfGraph, "decode_image_head": None}.get(name, DecodeGraph)
        module = ImageHeadGraph(model) if module is None else module(model, spec)
        graphs[name] = CoreMLBackend(bundle.path / entry["file"], spec, entry,
                                     model=FakeMLModel(model, entry, module, spec))
    session = open_model_session(model)
    reference = session.generate(b"def parse(text):\n", 300)
    session.reset()
    session.decode_graphs = DecodeGraphs({n: g for n, g in graphs.items() if n != "decode_image_head"},
                                         image_head=graphs.get("decode_image_head"))
    out, logprobs = session.generate(b"def parse(text):\n", 300, return_logprobs=True)
    session.reset()
    session.decode_graphs = None  # the segment step alone
    segment = session.score(b"def parse(text):\n" + out)[-300:]
    tol = 1e-5 if variant == "explicit" else STATEFUL_TOL  # Core ML keeps states in fp16
    np.testing.assert_allclose(logprobs, segment, atol=tol, rtol=0)
    if variant == "explicit":
        assert out == reference
