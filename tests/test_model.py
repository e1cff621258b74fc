import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neat_edge.model.checkpoint import load
from neat_edge.model.svf import SVFLinear, convert_to_svf
from neat_edge.patching import segment_patches


def _step(model, data, state=None, z=None):
    ids, mask = segment_patches(data.shape[1], model.cfg.patch_size)
    b = data.shape[0]
    state = model.initial_state(b) if state is None else state
    z = model.default_svf_z() if z is None else z
    with torch.no_grad():
        return model.step(data, torch.from_numpy(ids).repeat(b, 1), torch.from_numpy(mask).repeat(b, 1), z, state)


@settings(max_examples=12, deadline=None)
@given(st.data())
def test_strict_causality(model, data):
    """Changing byte t never changes log-probs at positions <= t (position t predicts byte t)."""
    n = data.draw(st.integers(2, model.cfg.segment_len))
    seq = data.draw(st.lists(st.integers(0, 255), min_size=n, max_size=n))
    t = data.draw(st.integers(0, n - 1))
    x = torch.tensor([seq])
    y = x.clone()
    y[0, t] = (y[0, t] + 1 + data.draw(st.integers(0, 254))) % 256
    a, _ = _step(model, x)
    b, _ = _step(model, y)
    diff = (a["byte_logprobs"] - b["byte_logprobs"]).abs().amax(-1)[0]
    assert float(diff[: t + 1].max()) == 0.0


def test_causality_across_segments(model, corpus):
    """A change in segment 2 leaves every log-prob of segment 1 and the carried state alone."""
    seg = model.cfg.segment_len
    x = torch.tensor([list(corpus[: 2 * seg])])
    out1, state1 = _step(model, x[:, :seg])
    y = x.clone()
    y[0, seg + 5] ^= 1
    out1b, state1b = _step(model, y[:, :seg])
    assert torch.equal(out1["byte_logprobs"], out1b["byte_logprobs"])
    out2, _ = _step(model, x[:, seg:], state1)
    out2b, _ = _step(model, y[:, seg:], state1b)
    d = (out2["byte_logprobs"] - out2b["byte_logprobs"]).abs().amax(-1)[0]
    assert float(d[:6].max()) == 0.0 and float(d[6:].max()) > 0.0


def test_svf_z_one_equals_dense():
    dense = load("tiny", svf=False)
    svf = load("tiny", svf=True)
    x = torch.randint(0, 256, (2, dense.cfg.segment_len))
    ref, ref_state = _step(dense, x)
    got, got_state = _step(svf, x)
    torch.testing.assert_close(got["byte_logprobs"], ref["byte_logprobs"], atol=1e-5, rtol=0)
    for k in ref_state:
        torch.testing.assert_close(got_state[k], ref_state[k], atol=1e-5, rtol=1e-4)


def test_svf_linear_round_trip_and_z_scales_singular_values():
    torch.manual_seed(0)
    layer = SVFLinear(24, 40)
    x = torch.randn(3, 24)
    dense = layer(x)
    layer.to_svf()
    z = torch.ones(layer.rank)
    torch.testing.assert_close(layer(x, z), dense, atol=1e-6, rtol=1e-6)
    z[0] = 0.0  # drop the top singular direction
    w = layer.dense_weight(z)
    assert torch.linalg.matrix_rank(w) == layer.rank - 1


def test_truncated_svf_reports_error():
    torch.manual_seed(0)
    m = torch.nn.Sequential(SVFLinear(32, 32))
    errors = convert_to_svf(m, rank=8)
    (err,) = errors.values()
    assert 0.0 < err < 1.0


def test_outputs_have_the_spec_shapes(model):
    x = torch.randint(0, 256, (3, 50))
    out, state = _step(model, x)
    cfg = model.cfg
    assert out["byte_logprobs"].shape == (3, 50, cfg.vocab_size)
    assert out["image_logits"].shape == (3, 50, cfg.image_codebook_size)
    assert out["dispatch_logits"].shape == (3, cfg.n_experts)
    np.testing.assert_allclose(out["byte_logprobs"].exp().sum(-1).numpy(), 1.0, atol=1e-5)
    assert state["byte_context"].shape == (3, cfg.context_len)
