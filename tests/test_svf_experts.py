"""Transformer² SVF linears and the expert library: conversion, z layout, files, mixing, the exported graph."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch

from neat_edge.config import NeatConfig
from neat_edge.errors import NeatError
from neat_edge.experts import (
    ExpertLibrary,
    base_model_id,
    layout_of,
    library_for_model,
    load_expert,
    save_expert,
)
from neat_edge.fileio import sha256_file
from neat_edge.model.checkpoint import build, load, load_checkpoint, save_checkpoint
from neat_edge.model.svf import SVFLinear, convert_to_svf, svf_layout
from neat_edge.patching import segment_patches
from neat_edge.runtimes import open_model_session, open_session


def _plan(cfg, batch, dtype=torch.float32):
    ids, mask = segment_patches(cfg.segment_len, cfg.patch_size)
    return torch.from_numpy(ids).repeat(batch, 1), torch.from_numpy(mask).to(dtype).repeat(batch, 1)


def random_z(model, seed, scale=0.2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: (1 + scale * rng.standard_normal(rank)).astype(np.float32) for name, _, rank in svf_layout(model)}


def test_z_one_equals_dense_to_1e6_over_chained_segments(corpus):
    """The trained default model, dense vs SVF with z = 1, in float64 (so fp32 rounding noise does not
    hide a conversion error): every log-prob and every state tensor over 3 chained segments."""
    dense = load("default", svf=False).double()
    svf = copy.deepcopy(dense)
    convert_to_svf(svf)
    seg = dense.cfg.segment_len
    x = torch.tensor([list(corpus[: 3 * seg]), list(corpus[3 * seg : 6 * seg])])
    ids, mask = _plan(dense.cfg, 2, torch.float64)
    s_dense, s_svf = dense.initial_state(2), svf.initial_state(2)
    with torch.no_grad():
        for i in range(3):
            xi = x[:, i * seg : (i + 1) * seg]
            a, s_dense = dense.step(xi, ids, mask, None, s_dense)
            b, s_svf = svf.step(xi, ids, mask, svf.default_svf_z(), s_svf)
            assert (a["byte_logprobs"] - b["byte_logprobs"]).abs().max() <= 1e-6
            for k in s_dense:
                assert (s_dense[k].double() - s_svf[k].double()).abs().max() <= 1e-6, k


def test_any_dense_linear_converts_with_reported_truncation_error():
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 32)
    x = torch.randn(5, 48)
    full, err = SVFLinear.from_linear(linear)
    assert err == 0.0 and full.is_svf and full.rank == 32
    torch.testing.assert_close(full(x, torch.ones(32)), linear(x), atol=1e-6, rtol=1e-6)
    truncated, err8 = SVFLinear.from_linear(linear, rank=8)
    s = torch.linalg.svdvals(linear.weight.detach().double())
    assert err8 == pytest.approx(float(s[8:].norm() / s.norm()), rel=1e-9)
    with torch.no_grad():
        w8, w = truncated.dense_weight(torch.ones(8)).double(), linear.weight.double()
    assert float((w8 - w).norm() / w.norm()) == pytest.approx(err8, rel=1e-5)


def test_truncated_svf_checkpoint_round_trips(tmp_path):
    model = load("tiny", svf_rank=24)
    assert model.svf_rank == 24 * len(svf_layout(model))
    assert all(0 < e < 1 for e in model.svf_truncation_error.values())
    save_checkpoint(model, tmp_path / "ckpt")
    again = load_checkpoint(tmp_path / "ckpt")
    assert [r for _, _, r in svf_layout(again)] == [r for _, _, r in svf_layout(model)]
    x = torch.randint(0, 256, (1, model.cfg.segment_len))
    ids, mask = _plan(model.cfg, 1)
    with torch.no_grad():
        a, _ = model.step(x, ids, mask, model.default_svf_z(), model.initial_state(1))
        b, _ = again.step(x, ids, mask, again.default_svf_z(), again.initial_state(1))
    assert torch.equal(a["byte_logprobs"], b["byte_logprobs"])


def test_svf_scope_all_puts_local_layers_under_z():
    cfg = NeatConfig(name="t", svf_scope="all", d_model=64, d_local=32, latent_layers=1, segment_len=32,
                     context_len=8, memory_heads=2, latent_heads=2, local_heads=2)
    model = build(cfg)
    names = [n for n, _, _ in svf_layout(model)]
    assert any(n.startswith("encoder.") for n in names) and any(n.startswith("decoder.") for n in names)
    x = torch.randint(0, 256, (2, 32))
    ids, mask = _plan(cfg, 2)
    with torch.no_grad():
        dense, _ = model.step(x, ids, mask, None, model.initial_state(2))
        convert_to_svf(model)
        z = model.default_svf_z()
        same, _ = model.step(x, ids, mask, z, model.initial_state(2))
        torch.testing.assert_close(same["byte_logprobs"], dense["byte_logprobs"], atol=1e-5, rtol=0)
        first = names.index(next(n for n in names if n.startswith("encoder.")))
        z2 = z.clone()
        z2[layout_of(model)[first]["offset"]] = 0.0  # one singular value of an encoder layer
        moved, _ = model.step(x, ids, mask, z2, model.initial_state(2))
    assert not torch.equal(moved["byte_logprobs"], same["byte_logprobs"])
    with pytest.raises(NeatError, match="svf_scope"):
        NeatConfig(svf_scope="everywhere")


def test_expert_files_round_trip_and_mix_exactly(model, tmp_path):
    za, zb = random_z(model, 1), random_z(model, 2)
    save_expert(tmp_path / "a.safetensors", "prose", za, {"base_id": base_model_id(model)})
    save_expert(tmp_path / "b.safetensors", "python", zb, {"base_id": base_model_id(model)})
    lib = library_for_model(model, tmp_path)
    assert lib.listing() == [{"name": "a", "domain": "prose"}, {"name": "b", "domain": "python"}]
    layout = layout_of(model)
    flat_a, flat_b = (np.concatenate([z[e["name"]] for e in layout]) for z in (za, zb))
    np.testing.assert_array_equal(lib.get("a").flat(layout), flat_a)
    hand = (0.3 * flat_a.astype(np.float64) + 0.7 * flat_b.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(lib.mix({"a": 0.3, "b": 0.7}), hand)
    np.testing.assert_array_equal(lib.mix({}), np.ones(model.svf_rank, np.float32))
    assert load_expert(tmp_path / "a.safetensors").metadata["base_id"] == base_model_id(model)


def test_expert_for_other_weights_or_layout_is_refused(model, tmp_path):
    save_expert(tmp_path / "other.safetensors", "prose", random_z(model, 1), {"base_id": "0123456789abcdef"})
    short = {k: v[:4] for k, v in random_z(model, 2).items()}
    save_expert(tmp_path / "short.safetensors", "prose", short, {"base_id": base_model_id(model)})
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    lib = library_for_model(model, tmp_path)
    assert lib.names == []
    assert set(lib.skipped) == {"other.safetensors", "short.safetensors", "junk.safetensors"}
    with pytest.raises(NeatError, match="other base weights"):
        lib.get("other")
    with pytest.raises(NeatError, match="does not fit"):
        lib.get("short")
    with pytest.raises(NeatError, match="bad expert name"):
        save_expert(tmp_path / "no good.safetensors", "x", random_z(model, 3))


def test_onnx_graph_parity_with_nontrivial_z(bundle_dir, corpus):
    """ONNX Runtime vs PyTorch through the same session, z far from 1, 6 full segments + a partial one."""
    seg = open_session(bundle_dir, "torch").config.segment_len
    data = corpus[: 6 * seg + 57]
    rng = np.random.default_rng(0)
    sessions = {b: open_session(bundle_dir, b) for b in ("onnxruntime", "torch")}
    z = (1 + 0.3 * rng.standard_normal(sessions["torch"].svf_z.shape[0])).astype(np.float32)
    out = {}
    for name, s in sessions.items():
        s.svf_z = z
        out[name] = s.score_with_distributions(data)
    assert np.abs(out["onnxruntime"][1] - out["torch"][1]).max() <= 1e-4
    base = open_session(bundle_dir, "onnxruntime").score(data)
    assert np.abs(base - out["onnxruntime"][0]).max() > 1e-2  # z really changed the model
    for k, v in sessions["torch"].state.items():
        ref = v.astype(np.float64)
        assert np.abs(sessions["onnxruntime"].state[k] - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), k


def test_adding_an_expert_file_needs_no_reexport(bundle_dir, model, tmp_path, corpus):
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bundle)
    graph_sha = sha256_file(bundle / "step.onnx")
    manifest = json.loads((bundle / "neat.json").read_text())
    assert manifest["svf_layout"] == layout_of(model) and manifest["svf_base_id"] == base_model_id(model)
    z = random_z(model, 7)
    save_expert(bundle / "experts" / "legal.safetensors", "license texts", z, {"base_id": base_model_id(model)})
    s = open_session(bundle, "onnxruntime")  # checksums of the shipped files still verify
    assert "legal" in s.experts.names
    assert {"name": "legal", "domain": "license texts"} in s.experts.listing()
    before = s.score(corpus[:300])
    s.reset()
    result = s.dispatch(b"", "expert:legal")
    assert result.weights == {"legal": 1.0}
    np.testing.assert_array_equal(s.svf_z, np.concatenate([z[e["name"]] for e in manifest["svf_layout"]]))
    assert np.abs(s.score(corpus[:300]) - before).max() > 1e-3
    assert sha256_file(bundle / "step.onnx") == graph_sha and json.loads((bundle / "neat.json").read_text()) == manifest


def test_default_bundle_ships_the_checkpoint_experts(bundle_dir, model):
    """The main job's bundle carries the experts and the trained dispatch head of its checkpoint."""
    manifest = json.loads((bundle_dir / "neat.json").read_text())
    shipped = {e["name"]: e for e in manifest["experts"]}
    assert len(shipped) >= 2, "train the experts: see README (Transformer² experts)"
    for e in shipped.values():
        assert (bundle_dir / e["file"]).is_file() and e["file"] in manifest["files"] and e["domain"]
    assert manifest["dispatch"]["experts"] and set(manifest["dispatch"]["experts"]) <= set(shipped)
    lib = ExpertLibrary(bundle_dir / "experts", manifest["svf_layout"], manifest["svf_base_id"])
    assert set(lib.names) == set(shipped)
    session = open_model_session(model)
    assert session.experts.dispatch_slots == manifest["dispatch"]["experts"]
