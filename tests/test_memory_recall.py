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
