"""Fuzzed session state files: truncated, bit-flipped and spliced bytes; tensors of the wrong shape or
dtype, NaN / Inf, missing or extra tensors, bad metadata, other format versions (written with a valid
digest, as a buggy or hostile writer would); states saved by another model; not safetensors at all.

Oracle: a refused file is a NeatError and leaves the session exactly as it was; an accepted corrupted
file must be the original one (the stream continues with the reference log-probs); an accepted edited
file continues with finite log-probs (or stops with a NeatError when its numbers overflow).
"""

import pickle

import numpy as np
import pytest
from hypothesis import strategies as st

from neat_edge.config import BOI, IMAGE_BASE
from neat_edge.errors import NeatError
from neat_edge.runtimes import open_model_session, open_session
from neat_edge.tensorfile import read_tensors, write_tensors
from tests.fuzzing import fuzz, outcome, sizes

TEXT_A = b"import os\n\ndef main(argv):\n    return os.path.join(*argv)\n" * 5
TEXT_B = b"\nclass Fuzz:\n    pass\n"


@pytest.fixture(scope="module")
def states(bundle_dir, tmp_path_factory):
    """The session all cases load into, and the state files they start from (with the log-probs of
    TEXT_B after each, from the untouched file)."""
    folder = tmp_path_factory.mktemp("states")
    session = open_session(bundle_dir)
    files, refs = {}, {}
    session.score(TEXT_A)
    files["bytes"] = folder / "bytes.safetensors"
    session.save_state(files["bytes"])
    session.reset()
    session.score(TEXT_A[:200])
    session._append_known(np.array([BOI, IMAGE_BASE + 3], np.int64))  # pending image tokens (MVoT)
    files["tokens"] = folder / "tokens.safetensors"
    session.save_state(files["tokens"])
    for name, f in files.items():
        session.load_state(f)
        refs[name] = session.score(TEXT_B)
    return session, files, refs, folder


def snapshot(session):
    return ({k: v.copy() for k, v in session.state.items()}, session.position, bytes(session._pending)
            if isinstance(session._pending, bytes) else session._pending.copy())


def assert_unchanged(session, before):
    state, position, pending = before
    assert session.position == position
    assert all(np.array_equal(session.state[k], v) for k, v in state.items())
    assert np.array_equal(np.asarray(session._pending if not isinstance(session._pending, bytes) else
                                     np.frombuffer(session._pending, np.uint8)),
                          np.asarray(pending if not isinstance(pending, bytes) else np.frombuffer(pending, np.uint8)))


def load_outcome(session, path):
    """'refused' (NeatError, session untouched) or the log-probs of TEXT_B after loading."""
    session.reset()
    session.score(b"some earlier stream")
    before = snapshot(session)
    try:
        session.load_state(path)
    except NeatError:
        assert_unchanged(session, before)
        outcome("states", refused=True)
        return "refused"
    outcome("states", refused=False)
    try:
        return session.score(TEXT_B)
    except NeatError:  # accepted, but its numbers overflow in the graph: the stream stops with an error
        return "stopped"


def corruption_ops():
    op = st.one_of(st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 7)),
                   st.tuples(st.just("cut"), st.floats(0, 1)),
                   st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=8)),
                   st.tuples(st.just("overwrite"), st.floats(0, 1), st.binary(min_size=1, max_size=16)),
                   st.tuples(st.just("header"), st.integers(0, 7), st.integers(0, 255)))  # the 8-byte length
    return st.tuples(st.sampled_from(["bytes", "tokens"]), st.lists(op, min_size=1, max_size=4))


def corrupt(data: bytes, ops) -> bytes:
    data = bytearray(data)
    for op in ops:
        i = min(int(op[1] * len(data)), max(len(data) - 1, 0)) if op[0] != "header" else op[1]
        if op[0] == "flip" and data:
            data[i] ^= 1 << op[2]
        elif op[0] == "cut":
            del data[i:]
        elif op[0] == "insert":
            data[i:i] = op[2]
        elif op[0] == "overwrite":
            data[i : i + len(op[2])] = op[2]
        elif op[0] == "header" and len(data) > i:
            data[i] = op[2]
    return bytes(data)


@sizes(ci=150, slow=1500)
def test_fuzz_corrupted_state_bytes(states, tmp_path, examples, slow):
    session, files, refs, _ = states
    raw = {k: f.read_bytes() for k, f in files.items()}
    path = tmp_path / "s.safetensors"

    def check(case):
        base, ops = case
        data = corrupt(raw[base], ops)
        path.write_bytes(data)
        got = load_outcome(session, path)
        if data == raw[base] or not (isinstance(got, str) and got == "refused"):  # accepted: only the original
            np.testing.assert_array_equal(got, refs[base])

    fuzz("states", corruption_ops(), check, examples, slow)


FLOAT_DTYPES = ["float16", "float64", "int64", "int32", "uint8", "bool", "float32"]


def edit_ops():
    op = st.one_of(
        st.tuples(st.just("dtype"), st.integers(0, 99), st.sampled_from(FLOAT_DTYPES)),
        st.tuples(st.just("shape"), st.integers(0, 99), st.sampled_from(["batch2", "extra_dim", "drop_dim", "grow",
                                                                         "shrink", "scalar"])),
        st.tuples(st.just("nonfinite"), st.integers(0, 99), st.sampled_from([np.nan, np.inf, -np.inf]), st.floats(0, 1)),
        st.tuples(st.just("drop"), st.integers(0, 99)),
        st.tuples(st.just("extra"), st.sampled_from(["state.extra", "patcher.x", "pending_tokens", "junk"])),
        st.tuples(st.just("meta"), st.sampled_from(["format", "model_id", "position", "pending", "patches", "other"]),
                  st.one_of(st.sampled_from(["neat-session-state/1", "neat-session-state/2", "neat-session-state/3",
                                             "", "-1", "0", "1", "12", "127", "128", "99999999999999999999", "1e3",
                                             " 7", "0x10", "٣"]), st.text(max_size=6))),
        st.tuples(st.just("scale"), st.integers(0, 99), st.sampled_from([0.0, -1.0, 0.5, 2.0, 1e3, 1e30])),
    )
    return st.tuples(st.sampled_from(["bytes", "tokens"]), st.lists(op, min_size=1, max_size=3), st.booleans())


def apply_edit(tensors: dict, meta: dict, op) -> None:
    """Apply one edit (edits may undo each other: the verdict is taken on the final file)."""
    kind = op[0]
    if kind == "meta":
        meta[op[1]] = op[2]
        return
    if kind == "extra":  # a tensor the state does not have, or one of its own replaced by a wrong one
        tensors[op[1]] = np.zeros(3, np.float32)
        return
    names = sorted(tensors)
    name = names[op[1] % len(names)]
    t = tensors[name]
    with np.errstate(all="ignore"):
        if kind == "drop":
            del tensors[name]
        elif kind == "dtype":
            tensors[name] = t.astype(op[2])
        elif kind == "shape":
            new = {"batch2": lambda a: np.concatenate([a, a]) if a.ndim else a[None],
                   "extra_dim": lambda a: a[None], "drop_dim": lambda a: a.reshape(-1) if a.ndim > 1 else a[:1].reshape(()),
                   "grow": lambda a: np.concatenate([a, a[-1:]], axis=-1) if a.ndim else a[None],
                   "shrink": lambda a: a[..., :-1] if a.ndim and a.shape[-1] > 1 else a[None],
                   "scalar": lambda a: np.asarray(a.reshape(-1)[0] if a.size else 0, a.dtype)}[op[2]](t)
            tensors[name] = np.ascontiguousarray(new)
        elif kind == "nonfinite" and t.dtype.kind == "f" and t.size:
            a = t.copy()
            a.reshape(-1)[min(int(op[3] * a.size), a.size - 1)] = op[2]
            tensors[name] = a
        elif kind == "scale" and t.dtype.kind == "f":
            tensors[name] = (t * np.float32(op[2])).astype(t.dtype)


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def verdict(tensors: dict, meta: dict, original: dict, original_meta: dict, with_digest: bool) -> str:
    """What a correct loader does with the final file: 'refuse', 'same' (continues as the original) or
    'valid' (another, well-formed state)."""
    if set(tensors) != set(original) or meta.get("model_id") != original_meta["model_id"]:
        return "refuse"
    if meta.get("format") not in ("neat-session-state/1", "neat-session-state/2") or \
            (not with_digest and meta.get("format") != "neat-session-state/1"):
        return "refuse"
    for name, t in tensors.items():
        ref = original[name]
        if t.dtype != ref.dtype or t.shape != ref.shape or (t.dtype.kind == "f" and not np.isfinite(t).all()):
            return "refuse"
    pending, position, patches = _int(meta.get("pending")), _int(meta.get("position")), _int(meta.get("patches"))
    if pending != int(original_meta["pending"]) or position is None or position < pending or patches is None \
            or patches < 0:
        return "refuse"
    return "same" if all(np.array_equal(tensors[k], original[k]) for k in original) else "valid"


@sizes(ci=120, slow=1200)
def test_fuzz_edited_state_files(states, tmp_path, examples, slow):
    """Files whose digest is recomputed after the edit: every semantic check must hold on its own."""
    session, files, refs, _ = states
    path = tmp_path / "s.safetensors"

    def check(case):
        base, ops, with_digest = case
        original, original_meta = read_tensors(files[base], "state file")
        tensors, meta = dict(original), {k: v for k, v in original_meta.items() if k != "content_sha256"}
        for op in ops:
            apply_edit(tensors, meta, op)
        if with_digest:
            write_tensors(path, tensors, meta, "state file")
        else:  # a file with no digest: refused as format /2, read as the digest-less format /1
            from safetensors.numpy import save_file

            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=meta)
        expected = verdict(tensors, meta, original, original_meta, with_digest)
        got = load_outcome(session, path)
        if expected == "refuse":
            assert isinstance(got, str) and got == "refused", f"accepted a state file edited by {ops}"
        elif expected == "valid":  # finite log-probs, or a NeatError when the edited numbers overflow
            assert (isinstance(got, str) and got == "stopped") or \
                (isinstance(got, np.ndarray) and np.isfinite(got).all() and (got <= 0).all()), (ops, got)
        else:
            np.testing.assert_array_equal(got, refs[base])

    fuzz("states", edit_ops(), check, examples, slow)


@pytest.fixture(scope="module")
def other_model_state(bundle_dir, states):
    """A state saved by another model (same architecture, other weights)."""
    from neat_edge.config import NeatConfig
    from neat_edge.model.checkpoint import build
    from neat_edge.model.svf import convert_to_svf

    cfg = NeatConfig.from_dict({**states[0].config.to_dict(), "seed": 123})
    model = build(cfg)
    convert_to_svf(model)
    other = open_model_session(model.eval())
    other.score(TEXT_A)
    path = states[3] / "other.safetensors"
    other.save_state(path)
    return path


@sizes(ci=20, slow=200)
def test_fuzz_foreign_state_files(states, other_model_state, tmp_path, examples, slow):
    """Whole files from elsewhere: another model's state, pickles, text, empty, folders, odd paths."""
    session = states[0]
    path = tmp_path / "foreign.safetensors"
    kinds = st.one_of(st.just(("other_model",)), st.tuples(st.just("pickle"), st.integers(0, 5)),
                      st.tuples(st.just("bytes"), st.binary(max_size=200)), st.just(("folder",)),
                      st.just(("missing",)), st.tuples(st.just("name"), st.text(max_size=20)))

    def check(case):
        target = path
        if path.is_dir():
            path.rmdir()
        if case[0] == "other_model":
            path.write_bytes(other_model_state.read_bytes())
        elif case[0] == "pickle":
            path.write_bytes(pickle.dumps({"state.byte_context": np.zeros((1, 32), np.int64)}, protocol=case[1]))
        elif case[0] == "bytes":
            path.write_bytes(case[1])
        elif case[0] == "folder":
            path.unlink(missing_ok=True)
            path.mkdir()
        elif case[0] == "missing":
            target = tmp_path / "no" / "such.safetensors"
        else:
            target = tmp_path / case[1] if case[1] else case[1]
        got = load_outcome(session, target) if target != "" else "refused"
        if target == "":
            with pytest.raises(NeatError):
                session.load_state("")
        assert got == "refused"

    fuzz("states", kinds, check, examples, slow)
