"""Calibration: the reader feeds realistic (running-stream) state, int8 bundles load, run and record
their bits/byte delta, bad input is one line. A small seeded model keeps the int8 export fast."""

import json

import numpy as np
import onnx
import pytest

from neat_edge.calibration import CalibrationPlan, Int8Options, StreamCalibrationReader
from neat_edge.calibration.int8 import SENSITIVE, plan_nodes
from neat_edge.config import NeatConfig
from neat_edge.errors import NeatError
from neat_edge.runtimes import open_model_session, open_session
from neat_edge.spec import STATE_IN
from tests.test_cli import assert_clean_error, inprocess_error, run

MINI = NeatConfig(name="mini", segment_len=32, context_len=8, d_local=32, local_heads=2, encoder_layers=1,
                  decoder_layers=1, d_model=32, latent_layers=1, latent_heads=2, memory_heads=2, mlp_ratio=2,
                  n_experts=2, image_codebook_size=16, image_grid=2, svf_scope="all")


@pytest.fixture(scope="module")
def mini_model(tmp_path_factory):
    """A seeded init of MINI in SVF form, loaded as any checkpoint is."""
    from neat_edge.model.checkpoint import build, load_checkpoint, save_checkpoint

    directory = tmp_path_factory.mktemp("mini") / "ckpt"
    save_checkpoint(build(MINI), directory)
    return load_checkpoint(directory)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, corpus):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_bytes(corpus[4000:9000])
    return path


def test_reader_state_is_the_running_stream(model, text_file):
    seg = model.cfg.segment_len
    reader = StreamCalibrationReader(lambda: open_model_session(model), [text_file], segments_per_file=3)
    feeds = reader.all_feeds()
    assert len(feeds) == 3
    initial = {k: v.numpy() for k, v in model.initial_state(1).items()}
    memory = next(k for k in initial if k.startswith("memory.") and ".weight." in k)
    np.testing.assert_array_equal(feeds[0][STATE_IN + memory], initial[memory])  # segment 0: M_0
    reference = open_model_session(model)
    reference.score(text_file.read_bytes()[: 2 * seg])  # the state a session holds after 2 segments
    for name, value in reference.state.items():
        np.testing.assert_allclose(feeds[2][STATE_IN + name], value, rtol=0, atol=1e-6)
    assert np.abs(feeds[2][STATE_IN + memory] - initial[memory]).max() > 1e-4  # the memory has moved
    assert bytes(feeds[1]["bytes"][0].astype(np.uint8)) == text_file.read_bytes()[seg : 2 * seg]
    # ONNX Runtime's reader protocol: get_next until None, rewind starts over with the same samples
    reader.rewind()
    got = list(iter(reader.get_next, None))
    assert len(got) == 3 and np.array_equal(got[2]["bytes"], feeds[2]["bytes"])


def test_reader_bad_input(model, tmp_path):
    with pytest.raises(NeatError, match="not found"):
        StreamCalibrationReader(lambda: open_model_session(model), [tmp_path / "missing.txt"])
    short = tmp_path / "short.txt"
    short.write_bytes(b"too short")
    with pytest.raises(NeatError, match="shorter than one segment"):
        StreamCalibrationReader(lambda: open_model_session(model), [short]).all_feeds()
    with pytest.raises(NeatError, match="unknown calibration method"):
        Int8Options(method="kl")


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory, mini_model, text_file):
    from neat_edge.export.pipeline import export_bundle

    out = tmp_path_factory.mktemp("int8") / "mini-int8"
    plan = CalibrationPlan(files=[text_file], segments_per_file=8, max_segments=8, accuracy_segments=8)
    manifest = export_bundle(mini_model, out, precision="int8", calibration=plan, segments=8, log=lambda *_: None)
    return out, manifest


@pytest.mark.slow  # an int8 export: strict torch.export + calibration + parity (≈ 1-2 min on 2 cores)
def test_int8_bundle_runs_and_records_its_delta(int8_bundle, corpus):
    out, manifest = int8_bundle
    entry = manifest["graphs"]["onnx"]
    assert entry["precision"] == "int8" and "QuantizeLinear" in entry["ops"]
    report = manifest["calibration"]["graphs"]["step"]
    acc = report["accuracy"]
    assert acc["bits_per_byte_delta"] == pytest.approx(acc["bits_per_byte"] - acc["bits_per_byte_fp32"])
    assert report["quantized_matmuls"] > 0 and report["calibration_samples"] == 8
    assert manifest["calibration"]["exclude"] == list(SENSITIVE)
    assert manifest["calibration"]["activations"] == "u8"  # U8S8: ONNX Runtime's CPU fast path
    assert json.loads((out / "neat.json").read_text())["calibration"] == manifest["calibration"]
    session = open_session(out, backend="onnxruntime")
    logp = session.score(corpus[:200])
    assert logp.shape == (200,) and np.isfinite(logp).all()
    parity = manifest["parity"]["backends"]["onnxruntime"]
    assert parity["precision"] == "int8" and parity["passed"]


@pytest.mark.slow
def test_int8_graph_keeps_memory_and_state_fp32(int8_bundle):
    out, manifest = int8_bundle
    graph = onnx.load(str(out / "step.onnx"))
    producers = {o: n for n in graph.graph.node for o in n.output}
    for o in graph.graph.output:  # every output (the state included) is computed in float, not dequantized int8
        assert producers[o.name].op_type != "DequantizeLinear"
    assert all(i.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64) for i in graph.graph.input)
    dequantized = {o for n in graph.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    readers = {n.name for n in graph.graph.node if any(i in dequantized for i in n.input)}
    memory = set(plan_nodes(graph).memory)
    assert readers and memory and readers.isdisjoint(memory)  # no memory op reads an int8-rounded value
    assert {n.op_type for n in graph.graph.node if n.name in readers} <= {"MatMul", "Gemm"}


def _one_matmul(path, rng):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


@pytest.mark.parametrize("activations,dtype", [("u8", onnx.TensorProto.UINT8), ("s8", onnx.TensorProto.INT8)])
def test_int8_activation_types(tmp_path, activations, dtype):
    from onnxruntime.quantization import CalibrationDataReader

    from neat_edge.calibration.int8 import quantize_static_qdq

    rng = np.random.default_rng(0)
    _one_matmul(tmp_path / "f.onnx", rng)
    x = rng.standard_normal((2, 16)).astype(np.float32) + 1.0  # not centred: an asymmetric range

    class Reader(CalibrationDataReader):
        feeds = iter([{"x": x}])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static_qdq(tmp_path / "f.onnx", tmp_path / "q.onnx", Reader(), Int8Options(exclude=(), activations=activations))
    graph = onnx.load(str(tmp_path / "q.onnx"))
    inits = {t.name: t for t in graph.graph.initializer}
    q_x = next(n for n in graph.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    zero = inits[q_x.input[2]]
    assert zero.data_type == dtype
    if activations == "s8":  # symmetric: TensorRT's explicit quantization needs zero points of 0
        assert onnx.numpy_helper.to_array(zero).item() == 0
    with pytest.raises(NeatError, match="activation type"):
        Int8Options(activations="fp8")


def test_tensorrt_int8_is_symmetric_whatever_the_plan(monkeypatch):
    """--target all --precision int8: the ONNX graph takes the plan's u8, TensorRT's Q/DQ graph s8."""
    from neat_edge.calibration import settings as plan_module
    from neat_edge.export import quantize

    seen = []
    monkeypatch.setattr(quantize, "quantize_graph", lambda source, work, plan: seen.append(plan) or (None, {}))
    shared = CalibrationPlan(session_factory=lambda: None)
    with plan_module.calibrating(shared):
        quantize.quantize_qdq(type("Source", (), {"calibrate": object(), "spec": None})(), None)
    assert seen[0].options.activations == "s8" and shared.options.activations == "u8"
    assert seen[0].reports is shared.reports  # TensorRT's report lands in the export's manifest too


def export_error(monkeypatch, capsys, *args) -> str:
    from neat_edge.tools.export_cli import main

    return inprocess_error(main, ["neat-export", *args], monkeypatch, capsys)


def test_export_cli_calibration_errors(tmp_path, text_file, monkeypatch, capsys):
    out = str(tmp_path / "b")
    assert_clean_error(run("neat-export", "--out", out, "--precision", "int8", "--calibration", str(text_file),
                           str(tmp_path / "missing.txt")), "calibration file not found")  # FILES...: the second
    assert "--precision int8 only" in export_error(monkeypatch, capsys, "--out", out, "--calibration", str(text_file))
    assert "unknown calibration method" in export_error(monkeypatch, capsys, "--out", out, "--precision", "int8",
                                                        "--calibration-method", "bogus")
    assert not (tmp_path / "b").exists()


def test_calibration_files_spread():
    from neat_edge.tools.export_cli import spread_calibration_files

    assert spread_calibration_files(["--calibration", "a", "b", "--out", "x"]) == \
        ["--calibration", "a", "--calibration", "b", "--out", "x"]
    assert spread_calibration_files(["--out", "x", "--calibration", "a"]) == ["--out", "x", "--calibration", "a"]


def test_coreml_compression_config():
    pytest.importorskip("coremltools")
    from neat_edge.calibration.coreml import compression_config

    config = compression_config("palette6", ["memory_to_k_weight"])
    assert config.global_config.nbits == 6 and config.op_name_configs["memory_to_k_weight"] is None
    assert compression_config("int8", []).global_config.mode.lower() == "linear_symmetric"
    with pytest.raises(NeatError, match="unknown Core ML compression"):
        compression_config("palette3", [])


@pytest.mark.slow  # a Core ML conversion (≈ 1 min)
@pytest.mark.parametrize("compression,op", [("int8", "constexpr_affine_dequantize"), ("palette6", "constexpr_lut_to_dense")])
def test_coreml_weight_compression(tmp_path, compression, op):
    pytest.importorskip("coremltools")
    if compression.startswith("palette"):
        pytest.importorskip("sklearn")
    import dataclasses

    from neat_edge.calibration.coreml import CompressedCoreMLTarget
    from neat_edge.model.checkpoint import build, load_checkpoint, save_checkpoint
    from neat_edge.spec import step_spec

    cfg = dataclasses.replace(MINI, d_model=64, d_local=64)  # 64x64 memory projections: above the size threshold
    save_checkpoint(build(cfg), tmp_path / "ckpt")
    model = load_checkpoint(tmp_path / "ckpt")
    entry = CompressedCoreMLTarget(compression).build(model, step_spec(model), tmp_path)
    assert entry["precision"] == compression and op in entry["ops"]
    report = entry["weight_compression"]
    assert report["weights_compressed"] > 0 and report["memory_weights_kept"] == 4  # to_k, to_v, to_q, out
