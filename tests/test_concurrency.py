"""Concurrent sessions on one bundle: 8 threads (each with its own Session, all served by one shared ONNX
Runtime InferenceSession) and 8 processes give exactly the log-probs and samples of the same streams
run one after another; sessions share no mutable state."""

import multiprocessing
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from neat_edge.runtimes import open_session
from tests.test_soak import stdlib_text

STREAMS = 8
STREAM_BYTES = 16 * 128 + 77  # 16 full segments and a partial one


def streams() -> list[bytes]:
    text = stdlib_text(STREAMS * STREAM_BYTES * 3)
    return [text[i * 3 * STREAM_BYTES : i * 3 * STREAM_BYTES + STREAM_BYTES] for i in range(STREAMS)]


def run_stream(bundle, data: bytes, index: int, session=None):
    """One stream, scored in uneven pieces, then 8 sampled bytes: (log-probs, sample, final state)."""
    session = session or open_session(bundle)
    cuts = [0, 5, 700, 1300, len(data)]
    logp = np.concatenate([session.score(data[a:b]) for a, b in zip(cuts, cuts[1:])])
    sample = session.generate(b"", 8, temperature=0.8, seed=index)
    return logp, sample, {k: v.copy() for k, v in session.state.items()}


def assert_same(results, expected):
    for (logp, sample, state), (logp_ref, sample_ref, state_ref) in zip(results, expected):
        np.testing.assert_array_equal(logp, logp_ref)
        assert sample == sample_ref
        assert all(np.array_equal(state[k], state_ref[k]) for k in state_ref)


@pytest.fixture(scope="module")
def sequential(bundle_dir):
    return [run_stream(bundle_dir, data, i) for i, data in enumerate(streams())]


def test_eight_threads_equal_sequential(bundle_dir, sequential):
    sessions = [open_session(bundle_dir) for _ in range(STREAMS)]
    shared = sessions[0].backend.session
    assert all(s.backend.session is shared for s in sessions)  # one InferenceSession serves all eight
    with ThreadPoolExecutor(STREAMS) as pool:
        results = list(pool.map(lambda i: run_stream(bundle_dir, streams()[i], i, sessions[i]), range(STREAMS)))
    assert_same(results, sequential)
    with ThreadPoolExecutor(STREAMS) as pool:  # and sessions opened inside the threads, at the same time
        results = list(pool.map(lambda i: run_stream(bundle_dir, streams()[i], i), range(STREAMS)))
    assert_same(results, sequential)


def test_eight_processes_equal_sequential(bundle_dir, sequential):
    with multiprocessing.get_context("spawn").Pool(STREAMS) as pool:
        results = pool.starmap(run_stream, [(str(bundle_dir), data, i) for i, data in enumerate(streams())])
    assert_same(results, sequential)


def test_sessions_share_no_mutable_state(bundle_dir):
    a, b = open_session(bundle_dir), open_session(bundle_dir)
    fresh = {k: v.copy() for k, v in b.state.items()}
    a.score(b"only session a sees this " * 10)
    a.svf_z[:] = 0.5
    a.state[next(iter(a.state))][...] = 0  # even writing into a's arrays
    assert all(np.array_equal(b.state[k], v) for k, v in fresh.items())
    assert (b.svf_z == 1).all() and b.position == 0
    b.reset()
    assert all(np.array_equal(b.state[k], v) for k, v in fresh.items())
