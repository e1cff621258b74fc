"""NeuralMemory alone as an associative store (tests/memory_associations.py): what each write rule and
step recalls, with keys as correlated as a segment's. The README's table is the full sweep."""

import pytest

from tests.memory_associations import best_titans, recall, survival

D = 80  # the tiny preset's memory head width


def test_delta_rule_stores_and_retrieves_near_orthogonal_keys():
    """One pass of β = 1 writes: error ≈ N / 2d (each later write disturbs an earlier pair by its key
    overlap), every value identified; repeating the pairs (a repeated passage) converges."""
    assert recall(D // 10, 0.0, "delta", rate=1.0)[0] < 0.1
    err, ident = recall(D // 2, 0.0, "delta", rate=1.0)
    assert err < 0.35 and ident == 1.0
    assert recall(D // 2, 0.0, "delta", rate=1.0, writes=3)[0] < 0.1
    titans_err, _ = best_titans(D // 10, 0.0, "sum", 2)
    assert titans_err > 0.4  # Eq 16-18 at its best θ, same pairs: most of the error is left


@pytest.mark.parametrize("cosine", [0.5, 0.7])
@pytest.mark.parametrize("n", [20, 40])
def test_correlated_keys_need_the_newton_schulz_step(cosine, n):
    """Keys sharing a direction (the shipped tiny's keys: mean cosine 0.70 within a segment): the delta
    rule's overwrites and Eq 16-18's summed gradients both pour into the shared direction, and neither
    tells the values apart; the Newton-Schulz-normalised step (equal singular values) still does."""
    _, rate = best_titans(n, cosine, "newton_schulz", 2)
    ns_err, ns_ident = recall(n, cosine, "titans", "newton_schulz", 2, rate)
    _, rate = best_titans(n, cosine, "sum", 2)
    sum_err, sum_ident = recall(n, cosine, "titans", "sum", 2, rate)
    delta_ident = recall(n, cosine, "delta", rate=1.0)[1]
    assert ns_ident >= 0.95 and ns_err < sum_err
    assert sum_ident <= 0.75 and delta_ident <= 0.3


def test_an_association_outlives_later_writes_only_where_the_gate_writes_little():
    """A linear memory of width d holds ~d random associations: 320 later writes at β = 1 (1.25 KiB of
    4-byte patches) erase a pair written at β = 1, the same writes at β = 0.02 leave it."""
    assert survival(320, 1.0, D) > 0.9
    assert survival(320, 0.02, D) < 0.05


def test_the_titans_steps_are_what_they_say():
    """mean = sum with θ divided by the chunk's real tokens; huber = sum while every error is below its
    cap; newton_schulz = the update with equal-ish singular values and the same Frobenius norm."""
    import torch

    from neat_edge.model.titans import NeuralMemory, newton_schulz

    gen = torch.Generator().manual_seed(0)
    mems = {}
    for step in ("sum", "mean", "huber"):
        torch.manual_seed(0)
        mems[step] = NeuralMemory(16, heads=1, depth=2, chunk_size=12, step=step).double()
    state = mems["sum"].init_state(1)
    k, v, _ = mems["sum"].project(torch.randn(1, 12, 16, generator=gen, dtype=torch.float64))
    k, v = k.detach(), 0.05 * v.detach()  # small values: every error is below the Huber cap
    alpha, theta, eta = (torch.rand(1, 1, 12, generator=gen, dtype=torch.float64) * s for s in (0.1, 0.1, 0.9))
    mask = torch.ones(1, 1, 12, dtype=torch.float64)
    mask[..., 9:] = 0
    ref = mems["sum"].update(state, k, v, alpha, theta / 9, eta, mask)["weights"]
    for a, b in zip(mems["mean"].update(state, k, v, alpha, theta, eta, mask)["weights"], ref):
        torch.testing.assert_close(a, b)
    same = mems["sum"].update(state, k, v, alpha, theta, eta)["weights"]
    for a, b in zip(mems["huber"].update(state, k, v, alpha, theta, eta)["weights"], same):
        torch.testing.assert_close(a, b)
    capped = mems["huber"].update(state, k, 50 * v, alpha, theta, eta)["weights"]
    assert (capped[0] - mems["sum"].update(state, k, 50 * v, alpha, theta, eta)["weights"][0]).abs().max() > 1e-3
    g = torch.randn(3, 32, 16, generator=gen) @ torch.diag(torch.logspace(0, 2, 16))  # condition number 100
    o = newton_schulz(g)
    s = torch.linalg.svdvals(o)
    assert float(s.max() / s.min()) < 2.0
    torch.testing.assert_close(o.norm(dim=(-2, -1)), g.norm(dim=(-2, -1)), rtol=1e-4, atol=0)


def test_key_shift_recalls_what_followed_before_any_training():
    """memory_key_shift: the untrained memory (delta rule, β = 1) run over a stream of distinct inputs
    x_1..x_n, then given x_j again, reads back (the value of) x_{j+1}: the write of x_{j+1} was keyed by
    x_j. Without it (queries and keys from unrelated initial projections) the read matches nothing."""
    import torch

    from neat_edge.model.titans import NeuralMemory

    def read_after(shift: bool):
        torch.manual_seed(0)
        mem = NeuralMemory(64, heads=1, depth=1, chunk_size=64, rule="delta", beta_init=0.999, alpha_init=1e-4,
                           key_shift=shift)
        x = torch.randn(1, 24, 64, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            _, state = mem(x)  # one chunk: 24 writes
            queries = x[:, 3:20]  # x_4 .. x_20 again
            _, _, q, _ = mem.project_stream(queries, torch.zeros_like(state["conv"][0]))
            read = mem.retrieve(state, q)
            _, v, _ = mem.project(x)
        following, own = v[:, :, 4:21], v[:, :, 3:20]  # the values of x_{j+1} and of x_j
        cos = torch.nn.functional.cosine_similarity
        return float(cos(read, following, dim=-1).mean()), float(cos(read, own, dim=-1).mean())

    shifted_next, shifted_own = read_after(True)
    plain_next, plain_own = read_after(False)
    assert shifted_next > 0.7 and shifted_next > shifted_own + 0.5, (shifted_next, shifted_own)
    assert max(abs(plain_next), abs(plain_own)) < 0.2, (plain_next, plain_own)
