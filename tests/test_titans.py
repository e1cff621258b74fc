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
