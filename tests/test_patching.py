import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neat_edge.patching import EntropyPatcher, PatcherState, find_threshold, ids_from_starts, segment_patches


def test_fixed_segment_patches():
    ids, mask = segment_patches(10, 4)
    assert ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2] and mask.tolist() == [1, 1, 1]
    ids, mask = segment_patches(5, 4, n_patches=4)
    assert mask.tolist() == [1, 1, 0, 0]


def test_rules_global_relative_and_max_length():
    h = np.array([0.1, 3.0, 0.2, 0.2, 1.5, 1.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    s, _ = EntropyPatcher(threshold=2.0, max_patch_len=4).starts(h)
    assert np.flatnonzero(s).tolist() == [0, 1, 5, 9]  # stream start, H > θ_g, then max length 4
    s, _ = EntropyPatcher(threshold=2.0, relative_threshold=1.0, max_patch_len=16).starts(h)
    assert np.flatnonzero(s).tolist() == [0, 1, 4]  # 1.5 − 0.2 > θ_r
    ids, mask = ids_from_starts(s)
    assert ids.tolist() == [0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2] and len(mask) == 3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 5, allow_nan=False), min_size=1, max_size=200), st.data())
def test_streaming_equals_batch(entropies, data):
    h = np.array(entropies)
    patcher = EntropyPatcher(threshold=data.draw(st.floats(0, 5)),
                             relative_threshold=data.draw(st.none() | st.floats(0, 2)),
                             max_patch_len=data.draw(st.integers(1, 12)))
    whole, _ = patcher.starts(h)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(h)), max_size=6)))
    state, parts = PatcherState(), []
    for a, b in zip([0, *cuts], [*cuts, len(h)]):
        part, state = patcher.starts(h[a:b], state)
        parts.append(part)
    assert np.concatenate(parts).tolist() == whole.tolist()
    # no patch longer than the maximum
    ids, _ = ids_from_starts(whole)
    assert np.bincount(ids).max() <= patcher.max_patch_len


@pytest.mark.parametrize("target", [2.0, 4.5, 6.0])
def test_threshold_search_hits_target_mean_length(target):
    rng = np.random.default_rng(0)
    h = rng.gamma(2.0, 0.7, size=20000)  # entropy-like: positive, skewed
    patcher = find_threshold(h, target, relative_threshold=None, max_patch_len=16)
    starts, _ = patcher.starts(h)
    mean = len(h) / starts.sum()
    assert abs(mean - target) / target < 0.05
