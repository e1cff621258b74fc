"""Recall episodes in the training stream: where they go, that they are the seed's alone, exact resume."""

import dataclasses

import numpy as np
import pytest

from neat_edge.errors import NeatError
from neat_edge.training.data import ByteCorpus
from neat_edge.training.recall_episodes import KINDS, RecallEpisodes, RecallMix, plant_episodes
from neat_edge.training.train import TrainOptions, train
from tests.test_training import MICRO, STDLIB_JSON, _same, _weights

MIX = RecallMix(fraction=0.5, min_distance=100, max_distance=600, span=1024)


def test_episodes_repeat_their_bytes_at_the_drawn_distance_inside_one_span():
    corpus = ByteCorpus.from_paths([STDLIB_JSON])
    rng = np.random.default_rng(0)
    kinds = set()
    for window in corpus.sample(np.random.default_rng(1), 64, 2048):
        text = window.copy()
        placed = plant_episodes(window, rng, MIX)
        assert 1 <= len(placed) <= 3
        covered = np.zeros(len(window), bool)
        for ep in placed:
            first, repeat, n = ep["first"], ep["repeat"], ep["length"]
            kinds.add(ep["kind"])
            assert 16 <= n <= 64 and 100 <= ep["distance"] <= 600 and repeat == first + n + ep["distance"]
            assert first // MIX.span == (repeat + n - 1) // MIX.span  # one backprop span
            np.testing.assert_array_equal(window[first : first + n], window[repeat : repeat + n])
            if ep["kind"] == "passage":  # the corpus's own text, repeated
                np.testing.assert_array_equal(window[first : first + n], text[first : first + n])
            assert not covered[first : first + n].any() and not covered[repeat : repeat + n].any()
            covered[first : first + n] = covered[repeat : repeat + n] = True
        np.testing.assert_array_equal(window[~covered], text[~covered])  # the rest is the corpus
    assert kinds == set(KINDS)


def test_episode_bodies_have_their_formats():
    from neat_edge.training.recall_episodes import make_body

    rng = np.random.default_rng(2)
    bodies = {kind: [make_body(rng, kind) for _ in range(50)] for kind in ("record", "identifier", "quoted")}
    assert all(b.endswith(b"\n") and (b": " in b or b" = " in b) for b in bodies["record"])
    assert all(b.replace(b"_", b"").isalnum() for b in bodies["identifier"])
    assert all(b.startswith(b'"') and b.endswith(b'"') for b in bodies["quoted"])


def test_mixed_batches_are_the_seeds_and_a_fraction_of_windows():
    corpus = ByteCorpus.from_paths([STDLIB_JSON])
    mixed = RecallEpisodes(corpus, MIX)
    a = mixed.sample(np.random.default_rng(3), 200, 1024)
    b = mixed.sample(np.random.default_rng(3), 200, 1024)
    np.testing.assert_array_equal(a, b)
    changed = (a != corpus.sample(np.random.default_rng(3), 200, 1024)).any(axis=1).mean()
    assert 0.35 < changed < 0.65  # fraction 0.5 (the plain windows are the first draws of the same seed)
    assert mixed.heldout_bytes == corpus.heldout_bytes  # held-out data is never touched


def test_bad_mixes_are_clear_errors():
    with pytest.raises(NeatError, match="--recall-fraction"):
        dataclasses.replace(MIX, fraction=1.5)
    with pytest.raises(NeatError, match="--recall-distances"):
        dataclasses.replace(MIX, min_distance=700)
    with pytest.raises(NeatError, match="backprop span"):
        dataclasses.replace(MIX, max_distance=4000)


def test_resume_with_recall_episodes_equals_an_uninterrupted_run(tmp_path):
    full = TrainOptions(steps=4, batch_size=2, segments=8, tbptt=8, warmup=1, eval_bytes=1024, seed=2,
                        recall_fraction=0.5, recall_distances=(40, 120))
    log = train(MICRO, [STDLIB_JSON], tmp_path / "full", full, show_progress=False)
    assert log["recall_episodes"]["span"] == 8 * MICRO.segment_len
    first = TrainOptions(**{**vars(full), "max_minutes": 1e-9})  # stops after one step
    train(MICRO, [STDLIB_JSON], tmp_path / "split", first, show_progress=False)
    other = TrainOptions(**{**vars(full), "recall_fraction": 0.25})
    with pytest.raises(NeatError, match="recall episodes"):
        train(MICRO, [STDLIB_JSON], tmp_path / "split", other, show_progress=False, resume=True)
    rest = train(MICRO, [STDLIB_JSON], tmp_path / "split", full, show_progress=False, resume=True)
    assert rest["steps_done"] == 4 and rest["loss_curve"] == log["loss_curve"]
    assert _same(_weights(tmp_path / "full"), _weights(tmp_path / "split"))
