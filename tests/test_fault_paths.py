"""One error path for every fault: a full filesystem, a refused or raced install, a graph that returns the
wrong shapes or fails inside ONNX Runtime, a bad argument at the Python API or on a command line, a
manifest that says two things. Each ends in one NeatError (one `error:` line from a CLI), and nothing is
left behind."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from neat_edge.errors import DiskFullError, NeatError
from neat_edge.fileio import atomic_write_bytes
from tests.fuzzing import assert_cli_outcome, clone_bundle, invoke, write_manifest


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".partial")) or ".old" in p.name)


# --- NeatError is the API's one exception type ------------------------------------------------------
def test_neat_error_is_a_value_error():
    assert issubclass(NeatError, ValueError) and issubclass(DiskFullError, NeatError)
    assert issubclass(DiskFullError, OSError)
    assert str(DiskFullError("cannot write x: no space", errno.ENOSPC, "x")) == "cannot write x: no space"


# --- full filesystems --------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_leaves_the_old_file(tmp_path, monkeypatch, code):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def full(self, data):
        raise OSError(code, os.strerror(code), str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(DiskFullError, match="previous f.bin is intact") as info:
        atomic_write_bytes(target, b"new")
    assert info.value.errno == code
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_a_library_that_hides_the_errno(tmp_path):
    """safetensors / torch report a full disk as their own error quoting the OS error: still DiskFullError."""
    from neat_edge.fileio import atomic_write

    def writer(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: ... })")

    with pytest.raises(DiskFullError, match="nothing was written"):
        atomic_write(tmp_path / "w.safetensors", writer)
    assert leftovers(tmp_path) == [] and not (tmp_path / "w.safetensors").exists()


def test_save_state_on_a_full_disk(bundle_dir, tmp_path, monkeypatch):
    from neat_edge.runtimes import open_session

    session = open_session(bundle_dir)
    session.append(b"hello, world")
    path = tmp_path / "s.safetensors"
    session.save_state(path)
    before = path.read_bytes()
    session.append(b" more bytes")
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(DiskFullError, match="intact"):
        session.save_state(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and leftovers(tmp_path) == []


# --- export staging and install races -------------------------------------------------------------------
def staged_bundle(folder: Path, tag: str) -> Path:
    from neat_edge.export.bundle import staging_dir

    staged = staging_dir(folder / "out")
    (staged / "neat.json").write_text(json.dumps({"tag": tag}))
    return staged


def test_a_refused_install_leaves_nothing(tmp_path):
    from neat_edge.export.bundle import install_bundle

    (tmp_path / "out").write_text("a file, not a bundle")
    staged = staged_bundle(tmp_path, "a")
    with pytest.raises(NeatError, match="not a NEAT bundle"):
        install_bundle(staged, tmp_path / "out")
    assert not staged.exists() and leftovers(tmp_path) == []


def test_export_refuses_a_bad_out_before_any_work(model, tmp_path):
    from neat_edge.export.pipeline import export_bundle

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(NeatError, match="not a NEAT bundle"):
        export_bundle(model, tmp_path / "out", verify=False, log=lambda *_: None)
    assert leftovers(tmp_path) == [] and (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_the_loser_of_an_install_race(tmp_path, monkeypatch):
    """Another export installs `out` between this one's check and its rename: a clear error, and
    neither this bundle's staging folder nor anything else of it stays."""
    import neat_edge.export.bundle as export_bundle_module

    real = export_bundle_module.rename_new

    def other_wins(src, dst):
        Path(dst).mkdir()
        (Path(dst) / "neat.json").write_text('{"tag": "winner"}')
        real(src, dst)

    monkeypatch.setattr(export_bundle_module, "rename_new", other_wins)
    staged = staged_bundle(tmp_path, "loser")
    with pytest.raises(NeatError, match="another export installed it first"):
        export_bundle_module.install_bundle(staged, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "neat.json").read_text()) == {"tag": "winner"}
    assert leftovers(tmp_path) == []


def _install(args):
    folder, tag, barrier = args
    from neat_edge.export.bundle import install_bundle

    staged = staged_bundle(Path(folder), tag)
    barrier.wait()
    try:
        install_bundle(staged, Path(folder) / "out")
        return "installed"
    except NeatError as exc:
        return f"refused: {exc}"


def test_racing_installs_leave_one_whole_bundle(tmp_path):
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(4)
        with ctx.Pool(4) as pool:
            results = pool.map(_install, [(str(tmp_path), str(i), barrier) for i in range(4)])
    assert "installed" in results
    assert all(r == "installed" or "another export" in r for r in results), results
    assert json.loads((tmp_path / "out" / "neat.json").read_text())["tag"] in "0123"
    assert leftovers(tmp_path) == []


# --- graph outputs and ONNX Runtime failures --------------------------------------------------------------
def tiny_graph(path: Path) -> None:
    """y = Reshape(x, n): an ONNX graph whose output shape only its input values decide, so neither ONNX
    nor ONNX Runtime can know it before the run (the graph declares y with symbolic sizes)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    n = helper.make_tensor_value_info("n", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "n"], ["y"])], "g", [x, n], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("n, why", [([2, 2], r"returned 'y' of shape \[2, 2\]"),  # the spec says [batch, 4]
                                    ([1, 8], "failed to run in ONNX Runtime")])  # 4 values cannot be [1, 8]
def test_graph_outputs_are_checked_and_failures_named(tmp_path, n, why):
    from neat_edge.runtimes.onnxruntime import OnnxRuntimeBackend
    from neat_edge.spec import GraphSpec, TensorSpec

    path = tmp_path / "g.onnx"
    tiny_graph(path)
    spec = GraphSpec("probe", (TensorSpec("x", "float32", ("batch", 4)), TensorSpec("n", "int64", (2,))),
                     (TensorSpec("y", "float32", ("batch", 4)),))
    backend = OnnxRuntimeBackend(path, spec)
    feeds = {"x": np.ones((1, 4), np.float32), "n": np.array(n, np.int64)}
    for run in (backend.step, lambda f: backend.step_native(f, frozenset({"y"}))):  # plain and IO-bound runs
        with pytest.raises(NeatError, match=why) as info:
            run(feeds)
        assert "probe" in str(info.value)
    assert backend.step({**feeds, "n": np.array([1, 4], np.int64)})["y"].shape == (1, 4)  # a right run passes


def test_output_check_dtypes_axes_and_ortvalues():
    import onnxruntime as ort

    from neat_edge.runtimes.validation import OutputCheck
    from neat_edge.spec import GraphSpec, TensorSpec

    spec = GraphSpec("g", (TensorSpec("x", "int64", ("batch", "n")),),
                     (TensorSpec("a", "float32", ("batch", 3)), TensorSpec("b", "int64", ("batch", "n"))))
    check = OutputCheck(spec, "graph g")
    feeds = {"x": np.zeros((2, 5), np.int64)}
    good = {"a": np.zeros((2, 3), np.float32), "b": np.zeros((2, 5), np.int64)}
    assert check(good, feeds) is good
    for bad in ({"a": good["a"].astype(np.float64), "b": good["b"]}, {"a": good["a"], "b": np.zeros((3, 5), np.int64)},
                {"a": np.zeros((2, 4), np.float32), "b": good["b"]}, {"a": good["a"]}):
        with pytest.raises(NeatError, match="graph g returned"):
            check(bad, feeds)
    fresh = OutputCheck(spec, "graph g")
    native = {"a": ort.OrtValue.ortvalue_from_numpy(np.zeros((2, 2), np.float32)), "b": good["b"]}
    with pytest.raises(NeatError, match="'a' of shape"):
        fresh(native, feeds)


def test_a_runtime_failure_inside_a_session(bundle_dir, monkeypatch):
    """An allocation failure inside session.run (what ORT raises as RuntimeException): one NeatError
    naming the graph and the cause."""
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    from neat_edge.runtimes import open_session

    session = open_session(bundle_dir)

    class Failing:
        def __init__(self, inner):
            self.inner = inner

        def run(self, *args):
            raise RuntimeException("Failed to allocate memory for requested buffer of size 1099511627776")

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(session.backend, "session", Failing(session.backend.session))
    with pytest.raises(NeatError, match="failed to run in ONNX Runtime: Failed to allocate"):
        session.score(b"x" * 200)


# --- arguments at the Python API ----------------------------------------------------------------------
@pytest.mark.parametrize("call, why", [
    (lambda s: s.stream("text", 4), "bytes"),
    (lambda s: s.stream(b"x", 4, temperature=float("nan")), "temperature"),
    (lambda s: s.stream(b"x", -1), "max_new_bytes"),
    (lambda s: s.generate(b"x", 4, temperature=float("inf")), "temperature"),
    (lambda s: s.generate_batch([b"ab"], 10**15), "max_new_bytes"),
    (lambda s: s.generate_batch([b"ab"] * 4000, 10_000), "split it"),
    (lambda s: s.generate_batch("ab", 4), "list"),
    (lambda s: s.generate_batch([b"ab", "cd"], 4), "bytes"),
    (lambda s: s.generate_batch([b"ab"], 4, temperature=float("nan")), "temperature"),
    (lambda s: s.generate(b"x", 2, seed=-1), "seed"),
    (lambda s: s.dispatch(b"x", "none", max_bytes=10**12), "max_bytes"),
])
def test_api_arguments_are_checked(bundle_dir, call, why):
    from neat_edge.runtimes import open_session

    session = open_session(bundle_dir)
    with pytest.raises(NeatError, match=why):
        call(session)


@pytest.mark.parametrize("kwargs, why", [({"threads": -3}, "threads"), ({"threads": 1.5}, "threads"),
                                         ({"backend": 3}, "backend"), ({"svf_z": "abc"}, "svf_z"),
                                         ({"svf_z": [float("nan")] * 4}, "svf_z")])
def test_open_session_arguments(bundle_dir, kwargs, why):
    from neat_edge.runtimes import open_session

    with pytest.raises(ValueError, match=why):  # a NeatError, caught as the ValueError it is
        open_session(bundle_dir, **kwargs)


# --- manifests that say two things ---------------------------------------------------------------------
def test_manifest_duplicate_keys_and_cache_shapes(bundle_dir, tmp_path):
    from neat_edge.bundle import open_bundle

    clone = clone_bundle(bundle_dir, tmp_path / "b")
    text = (bundle_dir / "neat.json").read_text()
    (clone / "neat.json").unlink()
    (clone / "neat.json").write_text(text.replace('"format": "neat-bundle"', '"format": "neat-bundle", "format": "x"', 1))
    with pytest.raises(NeatError, match="appears twice"):
        open_bundle(clone)
    manifest = json.loads(text)
    if not manifest.get("decode"):
        pytest.skip("the bundle has no decode graphs")
    manifest["decode"]["caches"][0]["shape"] = [*manifest["decode"]["caches"][0]["shape"][:-1], 7]
    write_manifest(clone, manifest)
    with pytest.raises(NeatError, match="decode.caches says"):
        open_bundle(clone)


# --- numbers on the command line --------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["neat", "recall", "default", "--filler", "README.md", "--length", "1000000000000"],
    ["neat", "profile", "--batch", "1000000000000"],
    ["neat", "profile", "--batch", "100000"],
    ["neat", "run", "BUNDLE", "x", "--dispatch-bytes", "99999999999"],
    ["neat", "run", "BUNDLE", "x", "--temperature", "inf"],
    ["neat", "run", "BUNDLE", "x", "--temperature", "nan"],
    ["neat", "run", "BUNDLE", "x", "--seed", "-1"],
    ["neat", "run", "BUNDLE", "x", "--image-scale", "100000"],
    ["neat", "train", "--data", "README.md", "--out", "OUT", "--lr", "nan"],
    ["neat", "parity", "BUNDLE", "--tolerance", "inf"],
])
def test_cli_numbers_are_checked(bundle_dir, tmp_path, argv):
    from neat_edge.tools.cli import main

    argv = [str(bundle_dir) if a == "BUNDLE" else str(tmp_path / "o") if a == "OUT" else a for a in argv]
    code, out, err = invoke(main, argv)
    assert code != 0
    assert_cli_outcome(code, out, err, argv)
    assert not (tmp_path / "o").exists()
