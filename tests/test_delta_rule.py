"""memory_rule="delta": the exact chunk-parallel gated delta rule against its token-by-token definition."""

import pytest
import torch
import torch.nn.functional as F

from neat_edge.config import NeatConfig, preset
from neat_edge.errors import NeatError
from neat_edge.model.delta_rule import unit_lower_inverse
from neat_edge.model.titans import NeuralMemory
from tests.titans_reference import sequential_delta, sequential_update


def _inputs(b, h, t, d, gen, correlation=1.0):
    """Keys as correlated as a segment's (a shared component + noise: mean cosine ≈ 0.5 at 1.0)."""
    shared = torch.randn(b, h, 1, d, generator=gen)
    k = F.normalize(correlation * shared + torch.randn(b, h, t, d, generator=gen), dim=-1)
    v = torch.randn(b, h, t, d, generator=gen)
    alpha = torch.rand(b, h, t, generator=gen) * 0.3
    beta = torch.rand(b, h, t, generator=gen)
    return k, v, alpha, beta


def _rel(a, b):
    return float((a.double() - b.double()).abs().max().detach() / b.double().abs().max().detach())


@pytest.mark.parametrize("t,n_chunks,size", [(40, 1, 64), (40, 5, 8), (37, 3, 16), (24, 24, 1), (30, 2, 32)])
def test_chunk_form_equals_the_sequential_rule_in_fp32(t, n_chunks, size):
    """fp32 chunk form vs the fp64 per-token recurrence, ≤ 1e-5, with masks and random gates; each chunk
    reads the memory the chunks before it left."""
    gen = torch.Generator().manual_seed(t + size)
    mem = NeuralMemory(32, heads=2, depth=1, chunk_size=size, rule="delta")
    k, v, alpha, beta = _inputs(2, 2, t, 16, gen)
    q = F.normalize(torch.randn(2, 2, t, 16, generator=gen), dim=-1)
    mask = (torch.rand(2, 2, t, generator=gen) > 0.25).float()
    w0 = torch.randn(2, 2, 16, 16, generator=gen) * 0.3
    state = {"weights": [w0], "momentum": [torch.randn(2, 2, 16, 16, generator=gen)]}
    got, read = mem.scan(state, k, v, alpha, beta / 2, torch.rand(2, 2, t, generator=gen), q, mask, n_chunks)
    ref = sequential_delta(w0.double(), k.double(), v.double(), alpha.double(), beta.double(), mask.double())
    assert _rel(got["weights"][0], ref) < 1e-5
    torch.testing.assert_close(got["momentum"][0], state["momentum"][0])  # kept as it was: η is unused
    chunk = t if n_chunks == 1 else size
    for c in range(0, t, chunk):
        mid = sequential_delta(w0.double(), k[:, :, :c].double(), v[:, :, :c].double(), alpha[..., :c].double(),
                               beta[..., :c].double(), mask[..., :c].double())
        assert _rel(read[:, :, c : c + chunk], q[:, :, c : c + chunk].double() @ mid.transpose(-1, -2)) < 1e-5


def test_beta_one_overwrites_exactly():
    """β = 1 stores each association exactly, whatever the memory held and however correlated the keys:
    after a chunk, the last key retrieves its value; a repeated key's new value replaces the old one."""
    gen = torch.Generator().manual_seed(0)
    mem = NeuralMemory(16, heads=1, depth=1, chunk_size=8, rule="delta")
    k, v, alpha, _ = _inputs(1, 1, 8, 16, gen, correlation=3.0)
    k[:, :, 6] = k[:, :, 2]  # the same key written twice
    state = {"weights": [torch.randn(1, 1, 16, 16, generator=gen)], "momentum": [torch.zeros(1, 1, 16, 16)]}
    ones = torch.ones(1, 1, 8)
    new = mem.update(state, k, v, alpha, ones / 2, ones)["weights"][0]
    torch.testing.assert_close(new[0, 0] @ k[0, 0, 7], v[0, 0, 7], atol=1e-5, rtol=0)
    sixth = sequential_delta(state["weights"][0], k[:, :, :7], v[:, :, :7], alpha[..., :7], ones[..., :7])
    torch.testing.assert_close(sixth[0, 0] @ k[0, 0, 2], v[0, 0, 6], atol=1e-5, rtol=0)


def test_gradients_equal_autograd_of_the_sequential_rule():
    gen = torch.Generator().manual_seed(1)
    mem = NeuralMemory(16, heads=2, depth=1, chunk_size=6, rule="delta").double()
    k, v, alpha, beta = (x.double() for x in _inputs(1, 2, 14, 8, gen))
    mask = (torch.rand(1, 2, 14, generator=gen) > 0.2).double()
    w0 = torch.randn(1, 2, 8, 8, generator=gen, dtype=torch.float64)
    target = torch.randn(1, 2, 8, 8, generator=gen, dtype=torch.float64)
    grads = []
    for run in ("chunk", "reference"):
        leaves = [x.clone().requires_grad_(True) for x in (w0, k, v, alpha, beta)]
        if run == "chunk":
            state = {"weights": [leaves[0]], "momentum": [torch.zeros_like(w0)]}
            w = mem.update(state, leaves[1], leaves[2], leaves[3], leaves[4] / 2, torch.zeros_like(alpha), mask)
            w = w["weights"][0]
        else:
            w = sequential_delta(*leaves, mask=mask)
        (w * target).sum().backward()
        grads.append([x.grad for x in leaves])
    for g, r in zip(*grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10)


def test_delta_is_titans_taken_token_by_token_when_nothing_is_forgotten():
    """With α = 0 the delta rule is Eq 32-33 at chunk size 1 with η = 0 and θ = β/2 (seed 004 §1.6)."""
    gen = torch.Generator().manual_seed(2)
    k, v, _, beta = (x.double() for x in _inputs(1, 2, 20, 8, gen))
    zeros = torch.zeros_like(beta)
    delta = NeuralMemory(16, heads=2, depth=1, chunk_size=20, rule="delta").double()
    state = {"weights": [torch.randn(1, 2, 8, 8, generator=gen, dtype=torch.float64)],
             "momentum": [torch.zeros(1, 2, 8, 8, dtype=torch.float64)]}
    got = delta.update(state, k, v, zeros, beta / 2, zeros)["weights"][0]
    ref = sequential_update(state, k, v, zeros, beta / 2, zeros, chunk_size=1)["weights"][0]
    torch.testing.assert_close(got, ref.detach())


def test_inverse_by_doubling_is_exact_for_correlated_keys_in_fp32():
    """The nilpotent series (I − A)(I + A²)… cancels binomial-sized terms for correlated keys; the
    blockwise doubling used here stays at fp32 rounding."""
    gen = torch.Generator().manual_seed(3)
    k = F.normalize(3.0 * torch.randn(1, 40, generator=gen) + torch.randn(64, 40, generator=gen), dim=-1)
    a = (0.999 * k @ k.T).tril(-1)
    exact = torch.linalg.inv(torch.eye(64, dtype=torch.float64) + a.double())
    assert _rel(unit_lower_inverse(a), exact) < 1e-5
    series, power = torch.eye(64) - a, -a
    for _ in range(5):
        power = power @ power
        series = series @ (torch.eye(64) + power)
    assert _rel(series, exact) > 1e-2  # why the doubling is used


def test_bf16_autocast_keeps_the_write_fp32():
    gen = torch.Generator().manual_seed(4)
    mem = NeuralMemory(16, heads=2, depth=1, chunk_size=8, rule="delta")
    k, v, alpha, beta = _inputs(1, 2, 16, 8, gen)
    state = mem.init_state(1)
    ref, ref_read = mem.scan(state, k, v, alpha, beta / 2, beta, k, None, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, read = mem.scan(state, k.bfloat16(), v.bfloat16(), alpha, beta / 2, beta, k.bfloat16(), None, 2)
    assert got["weights"][0].dtype == torch.float32
    assert _rel(got["weights"][0], ref["weights"][0]) < 2e-2 and _rel(read, ref_read) < 2e-2


def test_delta_gate_starts_at_beta_init():
    mem = NeuralMemory(32, heads=2, depth=1, rule="delta", beta_init=0.5)
    _, theta, _ = mem.gates(torch.zeros(1, 3, 32))
    torch.testing.assert_close(2 * theta, torch.full_like(theta, 0.5))


def test_config_memory_rule_and_step():
    tiny = preset("tiny")
    assert "memory_rule" not in tiny.to_json() and "memory_step" not in tiny.to_json()  # earlier ids hold
    cfg = NeatConfig.from_dict({**tiny.to_dict(), "memory_rule": "delta", "memory_depth": 1})
    assert NeatConfig.from_json(cfg.to_json()) == cfg and cfg.fingerprint() != tiny.fingerprint()
    with pytest.raises(NeatError, match="memory_depth"):
        NeatConfig.from_dict({**tiny.to_dict(), "memory_rule": "delta"})
    with pytest.raises(NeatError, match="memory_theta_max"):
        NeatConfig.from_dict({**cfg.to_dict(), "memory_theta_max": 4.0})
    with pytest.raises(NeatError, match="memory_rule"):
        NeatConfig.from_dict({**tiny.to_dict(), "memory_rule": "hebb"})
    with pytest.raises(NeatError, match="memory_step"):
        NeatConfig.from_dict({**tiny.to_dict(), "memory_step": "adam"})
    assert NeatConfig.from_dict({**tiny.to_dict(), "memory_step": "mean"}).memory_step == "mean"


def _delta_micro(arch, chunks=1):
    import dataclasses

    from tests.test_variants import micro, randomized

    # randomized: θ gate bias 2, i.e. β = σ(2) ≈ 0.88, and random conv taps: a memory doing real work
    return randomized(dataclasses.replace(micro(arch, chunks=chunks), memory_rule="delta", memory_depth=1))


@pytest.mark.parametrize("arch, chunks", [("mac", 2), pytest.param("mal", 1, marks=pytest.mark.slow)])
def test_delta_model_exports_with_chained_parity(arch, chunks, tmp_path):
    """A micro model with memory_rule="delta": a loop-free ONNX step graph, ≤ 1e-5 from PyTorch (fp32)
    in log-probs and in the carried state over 40 chained segments."""
    import onnx

    from neat_edge.export.pipeline import export_bundle

    manifest = export_bundle(_delta_micro(arch, chunks), tmp_path / arch, corpus=None, segments=40,
                             log=lambda *_: None, decode=False)  # the step graph is what this checks
    parity = manifest["parity"]
    assert parity["passed"] and parity["reference"]["segments"] >= 32
    assert parity["max_abs_logprob_diff"] <= 1e-5
    assert parity["backends"]["onnxruntime"]["state_max_rel_diff"] <= 1e-5
    assert {n.op_type for n in onnx.load(str(tmp_path / arch / "step.onnx")).graph.node}.isdisjoint({"Loop", "Scan",
                                                                                                    "If"})


def test_delta_memory_carries_information_across_segments(corpus):
    from neat_edge.runtimes import open_model_session

    model = _delta_micro("mac")
    a, b = open_model_session(model), open_model_session(model)
    a.score(corpus[:256])
    b.score(corpus[:256])
    b.reset_memory()
    assert abs(a.score(corpus[256:288]) - b.score(corpus[256:288])).max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("rule_depth", [("delta", 1), ("titans", 2)])
def test_fp16_export_with_several_memory_chunks(rule_depth, tmp_path):
    """fp16 goes through strict torch.export: the chunk padding and the read slice must add no guard on
    the dynamic patch axis (padding by concatenate-then-slice), with either rule."""
    import dataclasses

    from neat_edge.export.pipeline import export_bundle
    from tests.test_variants import micro, randomized

    rule, depth = rule_depth
    model = randomized(dataclasses.replace(micro("mac", chunks=2), memory_rule=rule, memory_depth=depth))
    manifest = export_bundle(model, tmp_path / rule, precision="fp16", segments=40, log=lambda *_: None)
    assert manifest["parity"]["passed"]
    assert abs(manifest["parity"]["backends"]["onnxruntime"]["bits_per_byte_delta"]) <= 0.01
