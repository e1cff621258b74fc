"""Backend selection (KIND:DEVICE), the fp16 ONNX export with fp32 state I/O and its parity, the parity
table of `neat parity --backends all`, and what `--target all` builds here."""

import json
import os

import onnx
import onnxruntime as ort
import pytest
import torch

from neat_edge.errors import NeatError
from neat_edge.export.verify import parity_report
from neat_edge.runtimes import open_session
from tests.test_cli import run


def test_backend_names_and_clear_errors(bundle_dir):
    with pytest.raises(NeatError, match="no device 'tpu'"):
        open_session(bundle_dir, "onnxruntime:tpu")
    with pytest.raises(NeatError, match="unknown backend 'mlx'"):
        open_session(bundle_dir, "mlx")
    with pytest.raises(NeatError, match="has no 'coreml' graph"):
        open_session(bundle_dir, "coreml")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(NeatError, match="has no CUDAExecutionProvider"):
            open_session(bundle_dir, "onnxruntime:cuda")
    if not torch.cuda.is_available():
        with pytest.raises(NeatError, match="torch:cuda needs a CUDA GPU"):
            open_session(bundle_dir, "torch:cuda")
    assert open_session(bundle_dir, "onnxruntime:cpu").backend.name == "onnxruntime"
    assert open_session(bundle_dir, "torch:cpu").backend.name == "torch"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to PyTorch")
def test_torch_cuda_matches_cpu(bundle_dir, corpus):
    data = corpus[: 16 * 128]
    report = parity_report(open_session(bundle_dir, "torch"), {"cuda": open_session(bundle_dir, "torch:cuda")}, data)
    assert report["backends"]["cuda"]["max_abs_logprob_diff"] <= 1e-4


@pytest.fixture(scope="module")
def fp16_bundle(tmp_path_factory, model):
    from neat_edge.export.pipeline import export_bundle

    out = tmp_path_factory.mktemp("fp16") / "tiny"
    manifest = export_bundle(model, out, ("onnx",), precision="fp16", segments=8, log=lambda *_: None)
    return out, manifest


def test_fp16_onnx_keeps_io_state_and_memory_fp32(fp16_bundle):
    out, manifest = fp16_bundle
    entry = manifest["graphs"]["onnx"]
    assert entry["precision"] == "fp16" and entry["fp32_memory_nodes"] > 100
    graph = onnx.load(str(out / entry["file"]))
    io_types = {v.name: v.type.tensor_type.elem_type for v in (*graph.graph.input, *graph.graph.output)}
    assert set(io_types.values()) <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}  # fp32 state I/O
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer) > 20
    producer = {o: n for n in graph.graph.node for o in n.output}
    types = {v.name: v.type.tensor_type.elem_type for v in graph.graph.value_info}

    def computed_as(name):
        """(dtype the value was computed in, dtypes it was cast through on the way to `name`)."""
        casts = []
        while producer[name].op_type == "Cast":
            casts.append(producer[name].attribute[0].i)
            name = producer[name].input[0]
        return types[name], casts

    memory = [n for n in io_types if n.startswith("next_state.memory.") and (".weight." in n or ".momentum." in n)]
    for name in memory:  # the memory update ran in fp32 and was never rounded to fp16 on its way out
        dtype, casts = computed_as(name)
        assert dtype == onnx.TensorProto.FLOAT and onnx.TensorProto.FLOAT16 not in casts, name
    assert computed_as("byte_logprobs")[0] == onnx.TensorProto.FLOAT16  # ... while the head ran in fp16


def test_fp16_onnx_parity_bits_per_byte(fp16_bundle, corpus):
    out, manifest = fp16_bundle
    assert manifest["parity"]["passed"] and manifest["parity"]["backends"]["onnxruntime"]["precision"] == "fp16"
    data = corpus[: 32 * 128]  # ≥ 32 chained segments, state carried
    report = parity_report(open_session(out, "torch"), {"fp16": open_session(out, "onnxruntime")}, data)
    r = report["backends"]["fp16"]
    assert abs(r["bits_per_byte"] - report["reference"]["bits_per_byte"]) <= 0.01
    assert r["top1_agreement"] >= 0.99 and r["state_max_rel_diff"] <= 0.05


def test_parity_all_prints_one_table_and_keeps_json_fields(bundle_dir, tmp_path):
    out = tmp_path / "parity.json"
    env_columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "240"  # rich draws the table at this width
    try:
        p = run("neat", "parity", str(bundle_dir), "--backends", "all", "--segments", "8", "--json", str(out))
    finally:
        os.environ.pop("COLUMNS") if env_columns is None else os.environ.__setitem__("COLUMNS", env_columns)
    err = p.stderr.decode()
    assert p.returncode == 0, err
    for column in ("backend", "precision", "max |Δ log-prob|", "Δ bits/byte", "top-1 agreement",
                   "state drift after 8 segments"):
        assert column in err, column
    report = json.loads(out.read_text())
    ort_result = report["backends"]["onnxruntime"]
    for key in ("max_abs_logprob_diff", "bits_per_byte", "top1_agreement", "state_max_rel_diff", "bits_per_byte_delta"):
        assert isinstance(ort_result[key], float)
    assert ort_result["precision"] == "fp32" and ort_result["passed"]
    assert "tensorrt" in report["unavailable"] and "coreml" in report["unavailable"]
    assert "not here" in err


def test_target_all_builds_what_it_can_and_says_why_not(monkeypatch):
    import importlib.util

    from neat_edge.tools.export_cli import select_targets

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "coremltools" else real(name, *a))
    targets, not_built = select_targets("all", None)
    assert targets == ("onnx", "tensorrt") and "coremltools is not installed" in not_built["coreml"]
    targets, not_built = select_targets("all", "int8")  # ONNX Runtime and TensorRT int8 (issue 9)
    assert targets == ("onnx", "tensorrt") and "coremltools is not installed" in not_built["coreml"]
    targets, not_built = select_targets("all", "palette6")  # Core ML weight compression only
    assert targets == () and "no palette6 variant" in not_built["onnx"]
    with pytest.raises(NeatError, match="cannot build target 'coreml' here"):
        select_targets("coreml", None)
