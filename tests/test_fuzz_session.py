"""Fuzzed Session calls: prompts of any bytes (empty to multi-megabyte in the slow run) and every public
method with arguments out of range or of the wrong type (negative or huge max_new_bytes, NaN / inf /
negative temperatures, odd seeds, str prompts, tokens out of the vocabulary, mis-shaped states and z).

Oracle: a NeatError, or a result with the promised shape and finite values; the stream stays usable
(after any call, scoring a probe from a reset session gives the reference log-probs).
"""

import math

import numpy as np
import pytest
from hypothesis import strategies as st

from neat_edge.errors import NeatError
from neat_edge.runtimes import open_session
from neat_edge.runtimes.validation import MAX_NEW_BYTES
from tests.fuzzing import fuzz, outcome, sizes

PROBE = b"probe: def f(x): return x\n"

NUMBERS = st.one_of(st.integers(-(2**70), 2**70), st.integers(-3, 9), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1, 2, -1, MAX_NEW_BYTES + 1, 2**63, 0.0, 1.0, 1e-300, 1e300, math.nan, math.inf,
                                     -math.inf, True, False, None, "3", b"3", [1]]))
# max_new_bytes / max_images: valid ones small (a case stays short), the others out of range or not ints
COUNTS = st.one_of(st.integers(0, 6), st.integers(MAX_NEW_BYTES + 1, 2**70), st.integers(-(2**70), -1),
                   st.sampled_from([-1, MAX_NEW_BYTES + 1, 1.0, 2.5, math.nan, True, None, "3", [2]]))


def prompts(max_size: int):
    return st.one_of(st.binary(max_size=max_size), st.binary(max_size=8), st.text(max_size=20),
                     st.lists(st.integers(-5, 600), max_size=20), st.sampled_from([None, 3, 1.5, b"", bytearray(b"ab"),
                                                                                   memoryview(b"xyz")]),
                     st.binary(max_size=40).map(lambda b: np.frombuffer(b, np.uint8)),
                     st.lists(st.integers(0, 300), max_size=20).map(lambda v: np.array(v, np.int64)),
                     st.lists(st.floats(0, 255), max_size=5).map(np.array))


def calls(max_prompt: int):
    """(method, args, kwargs) for every public Session method."""
    z_values = st.one_of(st.none(), st.sampled_from(["ones", "nan", "short", "float64", "huge"]))
    return st.one_of(
        st.tuples(st.just("score"), st.tuples(prompts(max_prompt)), st.just({})),
        st.tuples(st.just("score_with_distributions"), st.tuples(prompts(256)), st.just({})),
        st.tuples(st.just("generate"), st.tuples(prompts(64), COUNTS),
                  st.fixed_dictionaries({}, optional={"temperature": NUMBERS, "seed": NUMBERS,
                                                      "allow_images": st.one_of(st.booleans(), NUMBERS),
                                                      "max_images": COUNTS})),
        st.tuples(st.just("dispatch"), st.tuples(prompts(256), st.one_of(
            st.sampled_from(["classifier", "none", "expert:python", "expert:prose=0.7,python=0.3", "expert:nope",
                             "expert:python=nan", "fewshot:/no/such/file", "classifier:x", "expert:", ""]),
            st.text(max_size=12), NUMBERS)), st.fixed_dictionaries({}, optional={"max_bytes": NUMBERS, "seed": NUMBERS,
                                                                                "bogus": NUMBERS})),
        st.tuples(st.just("run_segment"), st.tuples(prompts(200)), st.fixed_dictionaries(
            {}, optional={"svf_z": z_values, "state": st.sampled_from(["own", "empty", "wrong"])})),
        st.tuples(st.just("restore"), st.tuples(st.sampled_from(["own", "none", "empty", "bad_position", "bad_state"])),
                  st.just({})),
        st.tuples(st.just("svf_z"), st.tuples(z_values), st.just({})),
        st.tuples(st.just("next_byte_logprobs"), st.just(()), st.just({})),
        st.tuples(st.just("next_outputs"), st.just(()), st.just({})),
        st.tuples(st.just("reset_memory"), st.just(()), st.just({})),
        st.tuples(st.just("save_state"), st.tuples(st.one_of(st.sampled_from(["", ".", "dir", "no/such/dir/s", None, 5]),
                                                             st.text(max_size=10))), st.just({})),
        st.tuples(st.just("load_state"), st.tuples(st.one_of(st.sampled_from(["", ".", "dir", "saved", None, 5]),
                                                             st.text(max_size=10))), st.just({})),
    )


def z_value(session, kind):
    rank = session.svf_z.shape[0]
    return {None: None, "ones": np.ones(rank, np.float32), "nan": np.full(rank, np.nan, np.float32),
            "short": np.ones(rank - 1, np.float32), "float64": np.ones(rank), "huge": np.full(rank, 1e30, np.float32)}[kind]


def perform(session, writer, tmp_path, method, args, kwargs):
    """Make the call; return its result (the checks below know what each method promises)."""
    if method == "svf_z":
        session.svf_z = z_value(session, args[0])
        return session.score(b"z")
    if method == "run_segment":
        state = {"own": None, "empty": {}, "wrong": {k: v[..., :1] for k, v in session.state.items()}}
        return session.run_segment(args[0], state=state[kwargs.get("state", "own")],
                                   svf_z=z_value(session, kwargs.get("svf_z")))
    if method == "restore":
        snap = session.snapshot()
        snap = {"own": snap, "none": None, "empty": {}, "bad_position": {**snap, "position": -1},
                "bad_state": {**snap, "state": {k: v[:0] for k, v in snap["state"].items()}}}[args[0]]
        return session.restore(snap)
    if method in ("save_state", "load_state") and isinstance(args[0], str):
        saved = tmp_path / "saved.safetensors"
        if method == "load_state" and not saved.exists():
            writer.save_state(saved)
        target = {"dir": str(tmp_path), "saved": str(saved), "": ""}.get(args[0], str(tmp_path / args[0]))
        return getattr(session, method)(target)
    return getattr(session, method)(*args, **kwargs)


def check_result(session, method, args, kwargs, result):
    if method in ("score", "score_with_distributions"):
        logp = result[0] if method == "score_with_distributions" else result
        n = len(bytes(args[0])) if not isinstance(args[0], np.ndarray) else args[0].size
        assert logp.shape == (n,) and np.isfinite(logp).all() and (logp <= 1e-6).all()
    elif method == "generate":
        if kwargs.get("allow_images"):
            assert isinstance(result, list)
        else:
            assert isinstance(result, bytes) and len(result) == args[1]
    elif method == "dispatch":
        assert np.isfinite(result.z).all() and result.z.shape == session.svf_z.shape
    elif method in ("next_byte_logprobs",):
        assert result.shape == (session.config.vocab_size,) and not np.isnan(result).any()


@pytest.fixture(scope="module")
def fuzz_session(bundle_dir):
    session = open_session(bundle_dir)
    reference = session.score(PROBE)
    session.reset()
    writer = open_session(bundle_dir)  # a second session, to write a good state file for load_state
    writer.score(b"another stream")
    return session, reference, writer


@sizes(ci=220, slow=2200)
def test_fuzz_session_calls(fuzz_session, tmp_path, examples, slow):
    session, reference, writer = fuzz_session
    reference_rank = session.svf_z.shape[0]

    def check(case):
        method, args, kwargs = case
        session.reset()
        session.svf_z = np.ones(reference_rank, np.float32)
        session.score(b"a stream in progress ")
        try:
            result = perform(session, writer, tmp_path, method, args, kwargs)
        except NeatError:
            outcome("session", refused=True)
        else:
            outcome("session", refused=False)
            check_result(session, method, args, kwargs, result)
        session.reset()  # the session is still usable, and nothing leaked into its fresh stream
        session.svf_z = np.ones(reference_rank, np.float32)
        np.testing.assert_array_equal(session.score(PROBE), reference)

    fuzz("session", calls(4096 if not slow else 1 << 16), check, examples, slow)


@pytest.mark.slow
@pytest.mark.parametrize("megabytes", [1, 4])
def test_multi_megabyte_prompts(fuzz_session, megabytes):
    """Random bytes, several megabytes: scored with finite log-probs, in constant time per byte."""
    session = fuzz_session[0]
    session.reset()
    data = np.random.default_rng(megabytes).integers(0, 256, megabytes << 20, dtype=np.uint8).tobytes()
    logp = session.score(data)
    assert logp.shape == (len(data),) and np.isfinite(logp).all()
    assert len(session.generate(b"", 4)) == 4
