import pytest
import torch

from neat_edge.model.titans import NeuralMemory
from tests.titans_reference import sequential_update


def _random_state(mem, batch, gen):
    st = mem.init_state(batch)
    return {"weights": [w + 0.1 * torch.randn(w.shape, generator=gen, dtype=w.dtype) for w in st["weights"]],
            "momentum": [0.1 * torch.randn(w.shape, generator=gen, dtype=w.dtype) for w in st["momentum"]]}


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("chunk", [1, 7, 16, 64])
def test_chunked_closed_form_equals_sequential(depth, chunk):
    gen = torch.Generator().manual_seed(depth * 100 + chunk)
    torch.manual_seed(0)
    mem = NeuralMemory(32, heads=2, depth=depth, chunk_size=chunk).double()
    b, t = 2, 40
    state = _random_state(mem, b, gen)
    k, v, _ = mem.project(torch.randn(b, t, 32, generator=gen, dtype=torch.float64))
    alpha = torch.rand(b, 2, t, generator=gen, dtype=torch.float64) * 0.5
    theta = torch.rand(b, 2, t, generator=gen, dtype=torch.float64) * 0.5
    eta = torch.rand(b, 2, t, generator=gen, dtype=torch.float64)
    got = mem.update(state, k.detach(), v.detach(), alpha, theta, eta)
    ref = sequential_update(state, k.detach(), v.detach(), alpha, theta, eta, chunk)
    for key in ("weights", "momentum"):
        for g, r in zip(got[key], ref[key]):
            assert float((g - r).abs().max().detach() / r.abs().max().detach()) < 1e-5


@pytest.mark.parametrize("chunk", [1, 16])
def test_clipped_surprise_equals_sequential_with_per_token_clipping(chunk):
    """max_grad_norm: each token's ∇_{W_l} ℓ_t is rescaled to norm ≤ max before Eq 13/14, as a
    token-by-token autograd reference does it; and the clip is active (the result differs unclipped)."""
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(0)
    clipped = NeuralMemory(32, heads=2, depth=2, chunk_size=chunk, max_grad_norm=0.5).double()
    b, t = 2, 24
    state = _random_state(clipped, b, gen)
    k, v, _ = clipped.project(torch.randn(b, t, 32, generator=gen, dtype=torch.float64))
    k, v = k.detach(), 3 * v.detach()
    alpha, theta, eta = (torch.rand(b, 2, t, generator=gen, dtype=torch.float64) * s for s in (0.2, 0.05, 0.9))
    got = clipped.update(state, k, v, alpha, theta, eta)
    ref = sequential_update(state, k, v, alpha, theta, eta, chunk, max_grad_norm=0.5)
    clipped.max_grad_norm = 0.0
    free = clipped.update(state, k, v, alpha, theta, eta)
    for g, r, f in zip(got["weights"] + got["momentum"], ref["weights"] + ref["momentum"],
                       free["weights"] + free["momentum"]):
        assert float((g - r).abs().max().detach() / r.abs().max().detach()) < 1e-6
        assert float((g - f).abs().max().detach() / f.abs().max().detach()) > 1e-2


def test_clipping_keeps_a_long_stream_bounded():
    """An inner step far too large for the memory's curvature: unclipped the weights blow up within
    a few hundred tokens, clipped they stay bounded (forgetting then caps the steady state)."""
    gen = torch.Generator().manual_seed(3)
    mem = NeuralMemory(16, heads=1, depth=2, chunk_size=8)
    clipped = NeuralMemory(16, heads=1, depth=2, chunk_size=8, max_grad_norm=4.0)
    clipped.load_state_dict(mem.state_dict())
    k, v, _ = mem.project(torch.randn(1, 512, 16, generator=gen))
    k, v = k.detach(), 4 * v.detach()
    alpha, theta, eta = (torch.full((1, 1, 512), x) for x in (0.01, 1.0, 0.9))
    with torch.no_grad():
        blown = mem.update(mem.init_state(1), k, v, alpha, theta, eta)
        kept = clipped.update(clipped.init_state(1), k, v, alpha, theta, eta)
    assert not all(torch.isfinite(w).all() and w.abs().max() < 1e3 for w in blown["weights"])
    assert all(torch.isfinite(w).all() and w.abs().max() < 1e3 for w in kept["weights"])


def _recall_error_after_writes(theta_max, eta, correlation, writes):
    """Relative retrieval error ‖M(k) − v‖² / ‖M_0(k) − v‖² after writing the same 32 pairs `writes`
    times (one chunk each), θ at half its bound: the memory's recall, apart from any training."""
    gen = torch.Generator().manual_seed(0)
    d, t = 80, 32
    mem = NeuralMemory(d, heads=1, depth=2, chunk_size=t, theta_max=theta_max, theta_init=theta_max / 2,
                       max_grad_norm=32)
    shared = torch.randn(1, 1, 1, d, generator=gen)
    k = torch.nn.functional.normalize(3 * correlation * shared + torch.randn(1, 1, t, d, generator=gen), dim=-1)
    v = torch.randn(1, 1, t, d, generator=gen)
    alpha, theta, eta = (torch.full((1, 1, t), x) for x in (0.002, mem.theta_max / 2, eta))
    with torch.no_grad():
        state = mem.init_state(1)
        before = (mem.retrieve(state, k) - v).pow(2).mean()
        for _ in range(writes):
            state = mem.update(state, k, v, alpha, theta, eta)
        return ((mem.retrieve(state, k) - v).pow(2).mean() / before).item()


def test_recall_needs_a_large_step_and_breaks_on_correlated_keys():
    """What the memory ablation found (README): at the seeds' θ one write of 32 near-orthogonal pairs
    recalls almost nothing; a step 800x larger without momentum recalls them; the same step with
    correlated keys (one chunk's gradients all taken at its start, Eq 16-18) overshoots."""
    assert _recall_error_after_writes(0.02, 0.0, 0.0, 1) > 0.99
    assert _recall_error_after_writes(16.0, 0.0, 0.0, 3) < 0.4
    assert _recall_error_after_writes(16.0, 0.0, 0.7, 2) > 10
    assert _recall_error_after_writes(16.0, 0.9, 0.0, 2) > 10  # momentum re-applies a stale chunk gradient


def test_forget_gate_clears_or_keeps_memory():
    mem = NeuralMemory(16, heads=1, depth=2, chunk_size=8)
    state = mem.init_state(1)
    k, v, _ = mem.project(torch.randn(1, 8, 16))
    ones, zeros = torch.ones(1, 1, 8), torch.zeros(1, 1, 8)
    cleared = mem.update(state, k, v, ones, zeros, zeros)  # α → 1, no writes
    kept = mem.update(state, k, v, zeros, zeros, ones)  # α → 0, no writes
    for w0, wc, wk in zip(state["weights"], cleared["weights"], kept["weights"]):
        assert wc.abs().max() < 1e-4 * w0.abs().max()
        torch.testing.assert_close(wk, w0)


def test_gradients_reach_projections_gates_and_initial_memory():
    mem = NeuralMemory(16, heads=2, depth=2, chunk_size=4)
    x = torch.randn(2, 12, 16)
    y, state = mem(x)
    (y.square().mean() + sum(w.square().mean() for w in state["weights"])).backward()
    for p in (mem.to_k.weight, mem.to_v.weight, mem.to_q.weight, mem.gate_alpha.bias, mem.gate_theta.bias,
              mem.gate_eta.bias, mem.init_weights[0]):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_single_head_accepts_unheaded_tensors_and_shared_gates():
    torch.manual_seed(0)
    mem = NeuralMemory(16, heads=1, depth=2, chunk_size=5).double()
    state = mem.init_state(2)
    k, v, q = mem.project(torch.randn(2, 12, 16, dtype=torch.float64))
    alpha, theta, eta = (torch.rand(2, 12, dtype=torch.float64) * 0.3 for _ in range(3))
    a = mem.update(state, k[:, 0], v[:, 0], alpha, theta, eta)
    b = mem.update(state, k, v, alpha[:, None], theta[:, None], eta[:, None])
    for x, y in zip(a["weights"], b["weights"]):
        torch.testing.assert_close(x, y)
    torch.testing.assert_close(mem.retrieve(a, q[:, 0]), mem.retrieve(b, q)[:, 0])
    ref = sequential_update(state, k, v, alpha[:, None], theta[:, None], eta[:, None], 5)
    for x, y in zip(a["weights"], ref["weights"]):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-9)


def test_gate_initialisations_follow_the_seeds():
    mem = NeuralMemory(32, heads=4)
    alpha, theta, eta = mem.gates(torch.zeros(1, 3, 32))
    torch.testing.assert_close(alpha, torch.full_like(alpha, 0.02))
    torch.testing.assert_close(eta, torch.full_like(eta, 0.9))
    # θ = 0.01 per unit of mean squared error, i.e. 0.01 / head_dim on Eq 12's summed loss
    torch.testing.assert_close(theta, torch.full_like(theta, 0.01 / mem.head_dim))


def _random_inputs(mem, b, t, gen):
    k, v, q = mem.project(torch.randn(b, t, mem.dim, generator=gen, dtype=torch.float64))
    gates = [torch.rand(b, mem.heads, t, generator=gen, dtype=torch.float64) * s for s in (0.5, 0.5, 1.0)]
    return k.detach(), v.detach(), q.detach(), gates


@pytest.mark.parametrize("depth", [1, 3])
def test_masked_tokens_are_skipped_exactly(depth):
    gen = torch.Generator().manual_seed(depth)
    torch.manual_seed(0)
    mem = NeuralMemory(16, heads=2, depth=depth, chunk_size=8).double()
    state = _random_state(mem, 2, gen)
    k, v, _, (alpha, theta, eta) = _random_inputs(mem, 2, 20, gen)
    mask = (torch.rand(2, 2, 20, generator=gen) > 0.3).double()
    got = mem.update(state, k, v, alpha, theta, eta, mask=mask)
    ref = sequential_update(state, k, v, alpha, theta, eta, 8, mask=mask)
    for key in ("weights", "momentum"):
        for g, r in zip(got[key], ref[key]):
            assert float(((g - r).abs().max() / r.abs().max()).detach()) < 1e-5
    # trailing padding changes nothing at all: the state equals the unpadded write
    pad = torch.cat([torch.ones(2, 2, 14), torch.zeros(2, 2, 6)], dim=-1).double()
    padded = mem.update(state, k, v, alpha, theta, eta, mask=pad)
    short = mem.update(state, k[:, :, :14], v[:, :, :14], alpha[..., :14], theta[..., :14], eta[..., :14])
    for key in ("weights", "momentum"):
        for g, r in zip(padded[key], short[key]):
            torch.testing.assert_close(g, r)


@pytest.mark.parametrize("t,n_chunks,size", [(24, 1, 64), (24, 4, 6), (23, 4, 6), (3, 4, 6), (9, 2, 8)])
def test_scan_fixed_chunk_count_equals_sequential(t, n_chunks, size):
    """scan() runs a fixed number of chunk_size chunks over a dynamic length (padding the tail): the
    same state as the sequential definition, and each chunk reads the memory the chunks before it
    left. n_chunks = 1 is a single chunk of all tokens."""
    gen = torch.Generator().manual_seed(t * 10 + n_chunks)
    torch.manual_seed(0)
    mem = NeuralMemory(16, heads=2, depth=2, chunk_size=size).double()
    state = _random_state(mem, 1, gen)
    k, v, q, (alpha, theta, eta) = _random_inputs(mem, 1, t, gen)
    got, read = mem.scan(state, k, v, alpha, theta, eta, q=q, n_chunks=n_chunks)
    size = t if n_chunks == 1 else size
    ref = sequential_update(state, k, v, alpha, theta, eta, size)
    for key in ("weights", "momentum"):
        for g, r in zip(got[key], ref[key]):
            assert float(((g - r).abs().max() / r.abs().max()).detach()) < 1e-5
    assert read.shape == q.shape
    mid = state
    for c in range(0, t, size):  # chunk c's read uses the weights after chunks < c
        torch.testing.assert_close(read[:, :, c : c + size], mem.retrieve(mid, q[:, :, c : c + size]))
        mid = sequential_update(mid, k[:, :, c : c + size], v[:, :, c : c + size], alpha[..., c : c + size],
                                theta[..., c : c + size], eta[..., c : c + size], size)
