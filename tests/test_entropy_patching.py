"""BLT end to end: entropy patching through the session, the bundle and ONNX Runtime."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neat_edge.config import NeatConfig
from neat_edge.export.pipeline import export_bundle
from neat_edge.model.checkpoint import build
from neat_edge.model.entropy import default_patching
from neat_edge.model.svf import convert_to_svf
from neat_edge.runtimes import open_model_session, open_session

CFG = NeatConfig(name="micro-blt", segment_len=32, context_len=8, d_local=32, local_heads=2, encoder_layers=1,
                 decoder_layers=1, d_model=48, latent_heads=2, latent_layers=2, memory_heads=2, n_experts=2,
                 image_codebook_size=16, patching="entropy", target_patch_len=30, max_patch_len=8,
                 ngram_buckets=257, patch_pooling="cross", memory_chunks=2)


@pytest.fixture(scope="module")
def blt(corpus):
    model = build(CFG)
    convert_to_svf(model)
    return model.eval(), default_patching(CFG, corpus[:8192])


@pytest.fixture(scope="module")
def blt_bundle(blt, tmp_path_factory):
    out = tmp_path_factory.mktemp("blt") / "bundle"
    export_bundle(blt[0], out, log=lambda *_: None, patching=blt[1], segments=40, decode=False)  # decoding: test_decoding
    return out


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_causality_over_random_patchings(blt, data):
    """Changing byte t never changes log-probs at positions <= t, whatever the patching."""
    model = blt[0]
    n = data.draw(st.integers(2, CFG.segment_len))
    x = torch.tensor([data.draw(st.lists(st.integers(0, 255), min_size=n, max_size=n))])
    starts = np.array([True] + data.draw(st.lists(st.booleans(), min_size=n - 1, max_size=n - 1)))
    ids = torch.from_numpy(np.cumsum(starts) - 1)[None]
    mask = torch.ones(1, int(starts.sum()))
    t = data.draw(st.integers(0, n - 1))
    y = x.clone()
    y[0, t] = (y[0, t] + 1 + data.draw(st.integers(0, 254))) % 256
    with torch.no_grad():
        a, _ = model.step(x, ids, mask, model.default_svf_z(), model.initial_state(1))
        b, _ = model.step(y, ids, mask, model.default_svf_z(), model.initial_state(1))
    diff = (a["byte_logprobs"] - b["byte_logprobs"]).abs().amax(-1)[0]
    assert float(diff[: t + 1].max()) == 0.0


def test_session_streams_and_reports_patch_lengths(blt, corpus):
    whole = open_model_session(blt[0], patching=blt[1])
    ref = whole.score(corpus[:700])
    s = open_model_session(blt[0], patching=blt[1])
    parts = np.concatenate([s.score(corpus[a:b]) for a, b in [(0, 5), (5, 33), (33, 300), (300, 700)]])
    np.testing.assert_allclose(parts, ref, atol=5e-5, rtol=0)  # fp32 reduction-order noise
    assert abs(whole.mean_patch_length - s.mean_patch_length) < 1e-9
    assert 1.5 < whole.mean_patch_length <= CFG.max_patch_len


def test_onnx_parity_with_entropy_patching(blt_bundle, corpus, tmp_path):
    from neat_edge.bundle import open_bundle
    from neat_edge.export.verify import parity_report

    manifest = open_bundle(blt_bundle).manifest
    assert manifest["patching"]["kind"] == "entropy" and manifest["parity"]["passed"]
    data = corpus[: 40 * CFG.segment_len]
    report = parity_report(open_session(blt_bundle, "torch"), {"ort": open_session(blt_bundle, "onnxruntime")}, data)
    r = report["backends"]["ort"]
    assert report["reference"]["segments"] >= 32 and r["max_abs_logprob_diff"] <= 1e-4
    assert r["mean_patch_length"] == report["reference"]["mean_patch_length"]
    # state (entropy context and patcher included) saves and resumes
    s = open_session(blt_bundle, "onnxruntime")
    s.score(corpus[:100])
    s.save_state(tmp_path / "s.safetensors")
    expected = s.score(corpus[100:300])
    s2 = open_session(blt_bundle, "onnxruntime")
    s2.load_state(tmp_path / "s.safetensors")
    np.testing.assert_array_equal(s2.score(corpus[100:300]), expected)
