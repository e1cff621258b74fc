import json
import shutil

import onnx
import pytest

from neat_edge.bundle import MANIFEST, open_bundle
from neat_edge.errors import NeatError
from neat_edge.export.verify import parity_report
from neat_edge.runtimes import open_session


def test_chained_segment_parity(bundle_dir, corpus):
    """fp32 ONNX Runtime vs PyTorch over ≥ 32 segments of real text, state carried throughout."""
    seg = open_bundle(bundle_dir).config.segment_len
    data = corpus[: 48 * seg]
    report = parity_report(open_session(bundle_dir, "torch"), {"ort": open_session(bundle_dir, "onnxruntime")}, data)
    r = report["backends"]["ort"]
    assert report["reference"]["segments"] >= 32
    assert r["max_abs_logprob_diff"] <= 1e-4
    assert r["top1_agreement"] >= 0.999
    assert r["state_max_rel_diff"] <= 1e-3
    assert abs(r["bits_per_byte"] - report["reference"]["bits_per_byte"]) < 1e-4


def test_manifest_describes_graph_state_and_files(bundle_dir):
    m = json.loads((bundle_dir / MANIFEST).read_text())
    g = m["graphs"]["onnx"]
    names = [t["name"] for t in g["inputs"]]
    assert names[:4] == ["bytes", "patch_ids", "patch_mask", "svf_z"]
    assert {"byte_logprobs", "image_logits", "dispatch_logits"} <= {t["name"] for t in g["outputs"]}
    pairs = {p["input"]: p["output"] for p in g["state"]}
    assert pairs["state.memory.0.weight.0"] == "next_state.memory.0.weight.0"
    assert all(("next_" + i) == o for i, o in pairs.items())
    bytes_in = next(t for t in g["inputs"] if t["name"] == "bytes")
    assert bytes_in["dynamic_axes"] == {"0": "batch", "1": "segment"}
    assert set(m["files"]) >= {"step.onnx", "initial_state.safetensors", "checkpoint/model.safetensors"}
    assert m["parity"]["passed"] and m["parity"]["max_abs_logprob_diff"] <= 1e-4
    assert m["tools"]["onnxruntime"] and m["tools"]["torch"]


def test_graph_is_loop_free_and_io_matches_spec(bundle_dir):
    g = onnx.load(str(bundle_dir / "step.onnx"))
    ops = {n.op_type for n in g.graph.node}
    assert not ops & {"Loop", "Scan", "If"}
    m = open_bundle(bundle_dir)
    _, spec = m.graph("onnx")
    assert [i.name for i in g.graph.input] == spec.input_names
    assert [o.name for o in g.graph.output] == spec.output_names


def test_corrupted_and_foreign_bundles(bundle_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bundle_dir, bad)
    (bad / "step.onnx").write_bytes(b"garbage")
    with pytest.raises(NeatError, match="corrupted: step.onnx differs from the manifest"):
        open_bundle(bad)
    old = tmp_path / "old"
    shutil.copytree(bundle_dir, old)
    m = json.loads((old / MANIFEST).read_text())
    m["format_version"] = 0
    (old / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(NeatError, match="format version 0"):
        open_bundle(old)
    (old / MANIFEST).write_text("{not json")
    with pytest.raises(NeatError, match="corrupted bundle manifest"):
        open_bundle(old)
    with pytest.raises(NeatError, match="not found"):
        open_bundle(tmp_path / "nope")
