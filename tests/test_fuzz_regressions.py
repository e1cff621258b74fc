"""The defects the fuzzing found, each kept as a plain regression case (every one of them ended in a
crash, a hang or a silently wrong result before it was fixed; README "Reliability" lists them)."""

import json
import math

import numpy as np
import pytest
from safetensors.numpy import load_file

from neat_edge.errors import NeatError
from neat_edge.runtimes import open_session
from neat_edge.tensorfile import read_tensors, write_tensors
from neat_edge.tools import bench_cli, cli
from tests.fuzzing import assert_cli_outcome, clone_bundle, invoke, write_manifest


@pytest.fixture(scope="module")
def session(bundle_dir):
    return open_session(bundle_dir)


@pytest.mark.parametrize("call, match", [
    (lambda s: s.generate(b"x", 3, temperature=math.nan), "temperature"),  # was ValueError in sampling
    (lambda s: s.generate(b"x", 3, temperature=math.inf), "temperature"),  # was silently uniform
    (lambda s: s.generate(b"x", 2.5), "max_new_bytes"),  # was TypeError
    (lambda s: s.generate(b"x", 1 << 40), "max_new_bytes"),  # was hours of generation
    (lambda s: s.generate(b"x", 2, temperature=1.0, seed=-1), "seed"),  # was ValueError
    (lambda s: s.score("text"), "encode it first"),  # was TypeError
    (lambda s: s.score(np.array([1, 2, 3])), "takes bytes"),  # int64 array: was read as its raw memory
    (lambda s: s.score([300]), "takes bytes"),  # was ValueError
    (lambda s: s.run_segment(b"x" * 1000), "segment holds"),  # was accepted: longer than the graph's segment
    (lambda s: s.run_segment(b""), "segment holds"),
    (lambda s: s.dispatch(b"abc", "classifier", max_bytes=1.5), "max_bytes"),  # was TypeError
    (lambda s: s.dispatch(b"abc", None), "strategy"),  # was AttributeError
    (lambda s: s.load_state(None), "file path"),  # was TypeError
])
def test_session_arguments(session, call, match):
    session.reset()
    with pytest.raises(NeatError, match=match):
        call(session)


def test_save_state_into_a_folder_names_the_folder(session, tmp_path):
    with pytest.raises(NeatError, match=f"cannot write state file {tmp_path}"):  # was IsADirectoryError on a temp file
        session.save_state(tmp_path)


def edited_state(session, tmp_path, edit) -> str:
    """A valid state file edited by `edit(tensors, meta)` and re-signed (a consistent, wrong file)."""
    session.reset()
    session.score(b"hello world " * 20)
    path = tmp_path / "s.safetensors"
    session.save_state(path)
    tensors, meta = read_tensors(path, "state file")
    meta = {k: v for k, v in meta.items() if k != "content_sha256"}
    edit(tensors, meta)
    write_tensors(path, tensors, meta, "state file")
    return path


MEMORY = "state.memory.0.weight.0"


@pytest.mark.parametrize("edit, match", [
    (lambda t, m: t[MEMORY].__setitem__((0, 0, 0, 0), np.nan), "NaN"),  # was loaded: every log-prob NaN after
    (lambda t, m: t.__setitem__(MEMORY, np.concatenate([t[MEMORY]] * 2)), "malformed|at most"),  # batch 2
    (lambda t, m: m.__setitem__("pending", "0"), "pending"),  # was loaded with pending bytes dropped
    (lambda t, m: m.__setitem__("position", "-5"), "counters"),  # was loaded
    (lambda t, m: m.__setitem__("format", "neat-session-state/9"), "format"),
])
def test_edited_state_files(session, tmp_path, edit, match):
    with pytest.raises(NeatError, match=match):
        session.load_state(edited_state(session, tmp_path, edit))


def test_bit_flipped_state_file(session, tmp_path):
    session.score(b"some stream " * 30)
    path = tmp_path / "s.safetensors"
    session.save_state(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40  # in a memory weight: was loaded, the stream silently different
    path.write_bytes(bytes(data))
    with pytest.raises(NeatError, match="digest"):
        session.load_state(path)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.__setitem__("format_version", True), "format version"),  # True == 1: was accepted
    (lambda m: m["patching"].__setitem__("patch_size", "4"), "patch_size"),  # was TypeError in patching
    (lambda m: m["patching"].__setitem__("patch_size", 2), "patch_size"),  # was accepted: other patches
    (lambda m: m["graphs"]["onnx"]["inputs"][3].__setitem__("shape", [10**12]), "shape"),  # was MemoryError
    (lambda m: m["graphs"]["onnx"]["inputs"][3].__setitem__("shape", [-1]), "shape"),  # was ValueError
    (lambda m: m.__setitem__("graphs", []), "graphs"),  # was TypeError
    (lambda m: m["graphs"]["onnx"]["outputs"][7].__setitem__("dtype", []), "dtype"),  # broke the new check itself
    (lambda m: (m["config"].__setitem__("segment_len", 64), m.pop("fingerprint")), "config"),  # was accepted
])
def test_mutated_manifests(bundle_dir, tmp_path, edit, match):
    work = clone_bundle(bundle_dir, tmp_path / "b")
    manifest = json.loads((work / "neat.json").read_text())
    edit(manifest)
    write_manifest(work, manifest)
    with pytest.raises(NeatError, match=match):
        open_session(work)


@pytest.mark.parametrize("edit", [lambda t: t.__setitem__("bias", t["bias"][:2].copy()),  # was RuntimeError
                                  lambda t: t["weight"].__setitem__((0, 0), np.nan)])  # was applied
def test_bad_dispatch_heads(model, tmp_path, edit):
    import copy

    from neat_edge.experts import DISPATCH_HEAD_FILE, apply_dispatch_head
    from neat_edge.model.checkpoint import DEFAULT_CHECKPOINT

    model = copy.deepcopy(model)
    tensors, meta = read_tensors(DEFAULT_CHECKPOINT / DISPATCH_HEAD_FILE, "dispatch head", require_digest=False)
    edit(tensors)
    write_tensors(tmp_path / DISPATCH_HEAD_FILE, tensors, meta, "dispatch head")
    before = model.dispatch_head.weight.detach().clone()
    with pytest.raises(NeatError):
        apply_dispatch_head(model, tmp_path)
    assert (model.dispatch_head.weight == before).all()
    assert load_file(str(DEFAULT_CHECKPOINT / DISPATCH_HEAD_FILE))  # the shipped head itself is untouched


@pytest.mark.parametrize("main, argv, match", [
    (cli.main, ["neat", "run"], "Missing argument"),  # usage errors were a multi-line box
    (cli.main, ["neat", "run", "x", "--max-bytes", "many"], "--max-bytes"),
    (cli.main, ["neat", "info", "/no/such\nplace"], "no/such\\nplace"),  # a newline split the error in two lines
    (cli.main, ["neat", "profile", "tiny", "--device", "x"], "unknown --device"),  # was an internal error
    (bench_cli.main, ["neat-bench", "memory", "--dim", "-1", "--tokens", "8"], "--dim"),  # was an internal error
    (bench_cli.main, ["neat-bench", "memory", "--dim", "9", "--heads", "2", "--tokens", "8"], "multiple"),
])
def test_command_lines(main, argv, match):
    code, out, err = invoke(main, argv)
    assert code != 0
    assert_cli_outcome(code, out, err, argv)
    assert match in err


def test_json_into_a_folder_names_the_folder(bundle_dir, tmp_path):
    argv = ["neat", "info", str(bundle_dir), "--json", str(tmp_path)]
    code, out, err = invoke(cli.main, argv)
    assert_cli_outcome(code, out, err, argv)
    assert code != 0 and f"Is a directory: {tmp_path}" in err  # was the name of a temporary file
