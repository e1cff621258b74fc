"""The Triton repository (export/triton.py): configs parsed with Triton's own model-config protobuf and checked
against the graphs, and the gRPC streaming client (tools/triton_client.py) run through the in-process stand-in
(tools/triton_standin.py) that applies Triton's implicit-state semantics to ONNX Runtime. No Triton server runs here."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason='needs tritonclient (pip install -e ".[triton]"; in the dev extra)')

from neat_edge.errors import NeatError  # noqa: E402
from neat_edge.export.triton import MANIFEST, MODEL, TRT_MODEL, write_repository  # noqa: E402
from neat_edge.export.triton_check import check_repository  # noqa: E402
from neat_edge.runtimes import open_session  # noqa: E402
from neat_edge.tools.triton_client import NeatTritonClient  # noqa: E402
from neat_edge.tools.triton_standin import TritonStandIn  # noqa: E402


@pytest.fixture(scope="module")
def repo(bundle_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton") / "repo"
    write_repository(bundle_dir, out)
    return out


def test_repository_parses_and_matches_the_graphs(repo, bundle_dir):
    manifest = json.loads((repo / MANIFEST).read_text())
    report = check_repository(repo)["models"][MODEL]
    n_states = len(json.loads((bundle_dir / "neat.json").read_text())["graphs"]["onnx"]["state"])
    assert report["states"] == n_states and report["control_inputs"] == 2 and report["backend"] == "onnxruntime"
    assert manifest["sizing"]["state_bytes_per_stream"] == sum(s["bytes_per_stream"] for s in manifest["states"])
    assert manifest["served_on_triton_here"] is False and TRT_MODEL in manifest["skipped"]
    config = (repo / MODEL / "config.pbtxt").read_text()
    bad = repo.parent / "bad"
    shutil.copytree(repo, bad)
    (bad / MODEL / "config.pbtxt").write_text(config.replace("dims: [ 2, 160, 80 ]", "dims: [ 2, 160, 81 ]", 1))
    with pytest.raises(NeatError, match="memory.0.weight.0"):
        check_repository(bad)
    (bad / MODEL / "config.pbtxt").write_text(config.replace("sequence_batching {", "sequence_batching {{", 1))
    with pytest.raises(NeatError, match="not a valid Triton model config"):
        check_repository(bad)


def test_tensorrt_variant_from_a_tensorrt_bundle(bundle_dir, tmp_path):
    trt_bundle = tmp_path / "trt"
    shutil.copytree(bundle_dir, trt_bundle)
    manifest = json.loads((trt_bundle / "neat.json").read_text())
    manifest["graphs"]["tensorrt"] = {**manifest["graphs"]["onnx"], "target": "tensorrt"}  # its ONNX stands in
    (trt_bundle / "neat.json").write_text(json.dumps(manifest))
    out = write_repository(trt_bundle, tmp_path / "repo")
    assert [m["backend"] for m in out["models"]] == ["onnxruntime", "tensorrt"]
    assert out["checked"]["models"][TRT_MODEL]["backend"] == "tensorrt"
    recipe = (tmp_path / "repo" / TRT_MODEL / "build_plan.sh").read_text()
    assert "--saveEngine=1/model.plan" in recipe and "COMMIT:1x1" in recipe


def test_client_reproduces_session_score_over_32_chained_segments(repo, bundle_dir, corpus):
    seg = json.loads((repo / MANIFEST).read_text())["segment_len"]
    data = corpus[: 32 * seg + seg // 3]  # 32 full segments and a partial one
    cut = 5 * seg + 7  # the client's second call finishes a segment its first left partial
    session = open_session(bundle_dir, backend="onnxruntime")
    expected = np.concatenate([session.score(data[:cut]), session.score(data[cut:])])
    server = TritonStandIn(repo)
    a = NeatTritonClient("", repo / MANIFEST, sequence_id=11, transport=server.client())
    b = NeatTritonClient("", repo / MANIFEST, sequence_id=12, transport=server.client())  # interleaved: its own state
    b.score(corpus[-3 * seg:])
    first = a.score(data[:cut])
    b.score(b"x" * 5)
    got = np.concatenate([first, a.score(data[cut:])])
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= 1e-4
    assert a.generate(b"\n", 8) == session.generate(b"\n", 8)
    a.close()
    b.close()
    assert server.sequences == {}  # sequence_end released both states
    with pytest.raises(NeatError, match="START flag"):
        server.infer(MODEL, [], None, "", 11, False, False)  # a sequence must begin with sequence_start


def test_cli_writes_the_repository_and_refuses_bad_input(bundle_dir, tmp_path):
    run = [sys.executable, "-c", "from neat_edge.tools.export_cli import main; main()", "--target", "triton"]
    ok = subprocess.run([*run, "--bundle", str(bundle_dir), "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "r" / MODEL / "config.pbtxt").is_file()
    bad = subprocess.run([*run, "--bundle", str(tmp_path / "none"), "--out", str(tmp_path / "s")], capture_output=True,
                         text=True)
    assert bad.returncode != 0 and bad.stderr.strip().startswith("error:") and len(bad.stderr.strip().splitlines()) == 1
    again = subprocess.run([*run, "--bundle", str(bundle_dir), "--out", str(tmp_path / "r")], capture_output=True,
                           text=True)
    assert again.returncode != 0 and "not empty" in again.stderr
