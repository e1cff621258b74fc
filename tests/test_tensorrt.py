"""TensorRT target: the TensorRT-ready ONNX (checker with full shape inference, only operators in the
parser's published list, profiles, trtexec recipe), the missing-TensorRT error path, and — where
TensorRT and an NVIDIA GPU exist (marked `tensorrt`) — the engine's parity."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import onnx
import pytest
from onnx import TensorProto, helper

from neat_edge.export.base import step_source
from neat_edge.export.tensorrt import TensorRTTarget, check_tensorrt_ready
from neat_edge.export.tensorrt_ops import SUPPORTED, unsupported_ops
from neat_edge.spec import step_spec

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def _has_gpu():
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def trt_dir(tmp_path_factory, bundle_dir, model):
    """The fp32 TensorRT target built next to the bundle's own step.onnx (which it reuses)."""
    out = tmp_path_factory.mktemp("trt")
    shutil.copy(bundle_dir / "step.onnx", out / "step.onnx")
    entry = TensorRTTarget("fp32").build_graph(step_source(model, step_spec(model)), out)
    return out, entry


def test_tensorrt_ready_onnx_checks_and_ops(trt_dir):
    out, entry = trt_dir
    graph = onnx.load(str(out / entry["file"]))
    inferred = onnx.shape_inference.infer_shapes(graph, check_type=True, strict_mode=True, data_prop=True)
    onnx.checker.check_model(inferred, full_check=True)
    ops = {n.op_type for n in inferred.graph.node}
    assert ops <= set(SUPPORTED), ops - set(SUPPORTED)
    assert unsupported_ops(inferred) == []
    assert not ops & {"Loop", "Scan", "If"}
    assert entry["precision"] == "fp32" and entry["strongly_typed"] and entry["simplifier"]
    # static everywhere but the named axes: every non-batch dim of the state is a number
    for value in graph.graph.input:
        dims = value.type.tensor_type.shape.dim
        assert all(d.dim_value or d.dim_param in ("batch", "segment", "patches") for d in dims), value.name


def test_checker_rejects_what_the_parser_does_not_take():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    axis = helper.make_tensor_value_info("axis", TensorProto.INT64, [])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    nodes = [helper.make_node("CumSum", ["x", "axis"], ["y"], name="cumsum"),  # axis not a build-time constant
             helper.make_node("Unique", ["y"], ["z"], name="unique")]  # not in the parser's list
    model = helper.make_model(helper.make_graph(nodes, "g", [x, axis], [z]), opset_imports=[helper.make_opsetid("", 18)])
    problems = unsupported_ops(onnx.shape_inference.infer_shapes(model))
    assert any("Unique" in p and "not supported" in p for p in problems)
    assert any("CumSum" in p and "build-time constant" in p for p in problems)
    from neat_edge.errors import NeatError

    with pytest.raises(NeatError, match="not TensorRT-ready"):
        check_tensorrt_ready(model)


def test_profiles_and_trtexec_recipe(trt_dir, model):
    out, entry = trt_dir
    seg = model.cfg.segment_len
    p = entry["profiles"]
    assert p["bytes"] == {"min": [1, 1], "opt": [1, seg], "max": [8, seg]}
    assert p["patch_mask"]["opt"] == [1, seg // model.cfg.patch_size]
    assert "svf_z" not in p  # static: no profile needed
    assert p["state.memory.0.weight.0"]["max"][0] == 8
    recipe = (out / entry["trtexec"]).read_text()
    assert "trtexec --onnx=step.trt.onnx --saveEngine=step.plan --stronglyTyped" in recipe
    for kind in ("min", "opt", "max"):
        assert f"--{kind}Shapes=bytes:{'x'.join(map(str, p['bytes'][kind]))}," in recipe
    assert "--timingCacheFile=" in recipe and os.access(out / entry["trtexec"], os.X_OK)
    assert entry["engine"] == "step.plan" and entry["engine_built"] == HAS_TENSORRT


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("trtcli") / "tiny"
    exe = os.path.join(os.path.dirname(sys.executable), "neat-export")
    cmd = [exe if os.path.exists(exe) else shutil.which("neat-export"), "--target", "tensorrt", "--precision", "fp32",
           "--segments", "8", "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out, p


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the error path of a machine without TensorRT")
def test_missing_tensorrt_writes_onnx_and_recipe_then_one_line_error(cli_export):
    out, p = cli_export
    err = p.stderr.decode()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert p.returncode != 0 and "Traceback" not in err
    assert len(errors) == 1 and errors[0].startswith("error: TensorRT is not installed"), err
    assert err.rstrip().endswith(errors[0])  # the last thing the user reads
    assert str(out / "step.trtexec.sh") in errors[0] and "bash" in errors[0]
    assert "built tensorrt (fp32)" in err  # what was written is reported before the error
    assert (out / "step.trt.onnx").is_file() and (out / "step.trtexec.sh").is_file()
    manifest = json.loads((out / "neat.json").read_text())
    g = manifest["graphs"]["tensorrt"]
    assert not g["engine_built"] and "not installed" in g["engine_missing"]
    assert manifest["parity"]["passed"] and "tensorrt" in manifest["parity"]["skipped"]


def test_tensorrt_ready_onnx_parity_through_onnxruntime(cli_export, corpus):
    """The simplified graph computes what PyTorch does (fp32, state carried over 32 segments)."""
    from neat_edge.export.verify import parity_report
    from neat_edge.runtimes import open_session

    out, p = cli_export
    assert (out / "neat.json").is_file(), p.stderr.decode()
    data = corpus[: 32 * 128]
    report = parity_report(open_session(out, "torch"), {"trt-onnx": open_session(out, "onnxruntime", graph="tensorrt")},
                           data)
    r = report["backends"]["trt-onnx"]
    assert r["max_abs_logprob_diff"] <= 1e-4 and r["state_max_rel_diff"] <= 1e-3


def test_tensorrt_backend_without_engine_is_a_clear_error(cli_export):
    from neat_edge.errors import NeatError
    from neat_edge.runtimes import open_session

    out, _ = cli_export
    if (out / "step.plan").exists():
        pytest.skip("an engine was built here")
    with pytest.raises(NeatError, match="TensorRT|engine"):
        open_session(out, "tensorrt")


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT is not installed (pip install tensorrt; NVIDIA GPU)")
def test_tensorrt_engine_parity(cli_export, corpus):
    if not _has_gpu():
        pytest.skip("no CUDA GPU visible")
    from neat_edge.export.verify import parity_report
    from neat_edge.runtimes import open_session

    out, p = cli_export
    assert p.returncode == 0, p.stderr.decode()
    data = corpus[: 32 * 128]
    trt = open_session(out, "tensorrt")
    report = parity_report(open_session(out, "torch"), {"tensorrt": trt}, data)
    r = report["backends"]["tensorrt"]
    assert r["max_abs_logprob_diff"] <= 1e-3 and r["top1_agreement"] >= 0.999
    assert r["state_max_rel_diff"] <= 1e-2


def test_decode_graphs_are_tensorrt_ready_with_batch_profiles(cli_export):
    """The decode graphs go through the same TensorRT-ready path: checked ONNX, one profile over the batch
    axis only (every cache has a fixed size), an engine recipe each; the export's decode parity ran them
    (through ONNX Runtime) against the segment step."""
    out, p = cli_export
    manifest = json.loads((out / "neat.json").read_text())
    entries = manifest["decode"]["graphs"]["tensorrt"]
    assert {"decode_start", "decode_byte", "decode_patch", "decode_commit", "decode_svf"} <= set(entries)
    for name, entry in entries.items():
        graph = onnx.load(str(out / entry["file"]))
        assert unsupported_ops(graph) == [], name
        assert {i.name for i in graph.graph.input} == {t["name"] for t in entry["inputs"]}, name
        for shapes in entry["profiles"].values():
            dynamic = [k for k, (lo, hi) in enumerate(zip(shapes["min"], shapes["max"])) if lo != hi]
            assert dynamic == [0], name  # the batch axis alone
        assert (out / entry["trtexec"]).is_file() and entry["engine"] == f"{name}.plan"
    decode = manifest["parity"]["decode"]["backends"]["onnxruntime (tensorrt onnx)"]
    assert decode["passed"] and decode["same_bytes_as_reference"]
