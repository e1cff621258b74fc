"""neat-bench: the JSON schema (not the timings), the plot, which bundle each precision runs on, bad
input as one line; the memory layer's analytic FLOP count against PyTorch's own counter."""

import json
import shutil

import pytest
import torch

from neat_edge.errors import NeatError
from tests.test_cli import assert_clean_error, inprocess_error, run

SCHEMA = {"backend": str, "precision": str, "size_mb": float, "score_bytes_per_s": float,
          "generate_bytes_per_s": float, "bits_per_byte": float}


def test_bench_json_schema_and_plot(bundle_dir, tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    p = run("neat-bench", str(bundle_dir), "--backends", "torch,onnxruntime", "--precisions", "fp32", "--runs", "3",
            "--warmup", "1", "--segments", "2", "--segment-len", "64", "--batch", "2", "--generate-bytes", "4",
            "--dispatch-generate-bytes", "0", "--threads", "1", "--json", str(out), "--plot", str(png),
            "--decode-breakdown")
    assert p.returncode == 0, p.stderr.decode()
    results = json.loads(out.read_text())["results"]
    assert [(r["backend"], r["precision"]) for r in results] == [("torch", "fp32"), ("onnxruntime", "fp32")]
    for r in results:
        for key, kind in SCHEMA.items():
            assert isinstance(r[key], kind), (key, r[key])
        assert set(r["step_latency_ms"]) >= {"p50", "p90", "p99"}
        assert all(isinstance(v, float) for v in r["step_latency_ms"].values())
        assert r["step_latency_ms"]["p50"] <= r["step_latency_ms"]["p99"]
        assert r["batch"] == 2 and r["segment_len"] == 64 and r["generated_bytes"] == 4 and r["runs"] == 3
        assert isinstance(r["first_call_ms"], float) and isinstance(r["peak_memory_mb"], float)
    assert abs(results[0]["bits_per_byte"] - results[1]["bits_per_byte"]) < 1e-3  # same weights, fp32 both
    for r in results:  # --decode-breakdown: per decode graph, and the time outside the runtime
        b = r["decode_breakdown"]
        assert b["generated_bytes"] == 4 and 0.0 <= b["share_outside_runtime"] < 1.0 and b["bytes_per_s"] > 0
        assert {"decode_start", "decode_byte"} <= set(b["graphs"])
        assert sum(g["runs_per_byte"] for g in b["graphs"].values() if g["runs"]) > 0
        assert all(g["ms_per_run_p50"] > 0 for g in b["graphs"].values())
    graphs = results[1]["decode_breakdown"]["graphs"]  # ONNX Runtime: the files it ran, their nodes before and after
    assert graphs["decode_byte"]["file"] == "decode_byte.cpu.onnx"
    assert 0 < graphs["decode_byte"]["nodes_optimized"] <= graphs["decode_byte"]["nodes"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def bench_error(monkeypatch, capsys, *args) -> str:
    from neat_edge.tools.bench_cli import main

    return inprocess_error(main, ["neat-bench", *args], monkeypatch, capsys)


def test_bench_bad_input(bundle_dir, tmp_path, monkeypatch, capsys):
    assert_clean_error(run("neat-bench", str(tmp_path / "nope")), "not found")  # the installed command
    bundle = str(bundle_dir)
    assert "unknown precision" in bench_error(monkeypatch, capsys, bundle, "--precisions", "int4")
    assert "unknown backend" in bench_error(monkeypatch, capsys, bundle, "--backends", "bogus")
    assert "PNG" in bench_error(monkeypatch, capsys, bundle, "--plot", str(tmp_path / "p.jpg"))
    assert "longer than" in bench_error(monkeypatch, capsys, bundle, "--segment-len", "4096", "--runs", "1")
    assert "not found" in bench_error(monkeypatch, capsys, bundle, "--data", str(tmp_path / "missing.txt"))
    (tmp_path / "empty").mkdir()
    assert "neither a bundle" in bench_error(monkeypatch, capsys, str(tmp_path / "empty"))


def test_bench_backend_names():
    from neat_edge.tools.bench_runner import parse_bench_backend

    assert parse_bench_backend("torch") == ("torch", None)
    assert parse_bench_backend("torch:compile") == ("torch", "default")
    assert parse_bench_backend("torch:cuda:cudagraphs") == ("torch:cuda", "reduce-overhead")
    assert parse_bench_backend("onnxruntime:cuda") == ("onnxruntime:cuda", None)
    with pytest.raises(NeatError, match="torch backends only"):
        parse_bench_backend("onnxruntime:compile")


def test_bench_bundle_per_precision(bundle_dir, tmp_path):
    """The given bundle serves its own precision and PyTorch; another precision comes from the cache
    (exported there once, found there afterwards)."""
    from neat_edge.tools.bench_bundles import BundleResolver, _weights_id

    resolver = BundleResolver(str(bundle_dir), cache=tmp_path)
    assert resolver.given_precision() == "fp32"
    assert resolver.bundle_for("fp32", needs_graph=True) == bundle_dir
    assert resolver.bundle_for("int8", needs_graph=False) == bundle_dir  # torch runs the checkpoint
    cached = tmp_path / _weights_id(str(bundle_dir)) / "fp16"
    shutil.copytree(bundle_dir, cached)
    assert resolver.bundle_for("fp16", needs_graph=True) == cached
    assert _weights_id(str(bundle_dir)) == _weights_id(str(cached))  # same weights, same key
    with pytest.raises(NeatError, match="unknown precision"):
        resolver.bundle_for("int4", needs_graph=True)


def test_bench_cache_drops_an_int8_bundle_calibrated_otherwise(bundle_dir, tmp_path, monkeypatch):
    from neat_edge.calibration import CalibrationPlan
    from neat_edge.tools.bench_bundles import BundleResolver, _weights_id

    resolver = BundleResolver(str(bundle_dir), cache=tmp_path)
    exported = []
    monkeypatch.setattr(resolver, "_export", lambda out, precision: exported.append(precision))
    cached = tmp_path / _weights_id(str(bundle_dir)) / "int8"
    shutil.copytree(bundle_dir, cached)
    manifest = json.loads((cached / "neat.json").read_text())
    for activations, reexported in (("u8", []), ("s8", ["int8"])):  # today's default is u8
        manifest["calibration"] = {**CalibrationPlan().settings(), "activations": activations}
        (cached / "neat.json").write_text(json.dumps(manifest))
        assert resolver.bundle_for("int8", needs_graph=True) == cached
        assert exported == reexported


@pytest.mark.parametrize("n_chunks,tokens,batch", [(1, 32, 2), (4, 29, 3), (2, 64, 1)])
def test_memory_layer_flop_count_matches_torch(n_chunks, tokens, batch):
    """The analytic GEMM count of one memory-layer call equals torch.utils.flop_counter's."""
    from torch.utils.flop_counter import FlopCounterMode

    from neat_edge.config import PRESETS
    from neat_edge.model.latent import LatentTransformer
    from neat_edge.tools.bench_roofline import H100, memory_layer_cost, roofline_floor_s

    cfg = PRESETS["tiny"]
    mem = LatentTransformer(cfg).layers[0].memory
    x = torch.randn(batch, tokens, cfg.d_model)
    state = mem.init_state(batch)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        k, v, q, _ = mem.project_stream(x, state["conv"][0])
        alpha, theta, eta = mem.gates(x)
        _, read = mem.scan(state, k, v, alpha, theta, eta, q, None, n_chunks)
        mem.merge(read)
    cost = memory_layer_cost(cfg.d_model, cfg.memory_heads, cfg.memory_depth, cfg.memory_expansion, tokens,
                             mem.chunk_size, n_chunks, batch)
    assert cost["gemm_flops"] == counter.get_total_flops()
    state_bytes = 4 * 2 * 2 * sum(p.numel() for p in mem.init_weights) * batch  # weights + momentum, in and out
    assert cost["bytes"] > state_bytes
    floor = roofline_floor_s(cost, H100)
    assert floor["floor_s"] == max(cost["flops"] / H100["fp32_flops"], cost["bytes"] / H100["hbm_bytes_per_s"])
