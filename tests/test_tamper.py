"""Tampered bundles and files from elsewhere: every file is checked against the manifest's sha256 when
the bundle is opened (the error names it), paths that leave the bundle are refused (`../`, absolute
paths, symlinks, ONNX external data), and nothing is ever unpickled."""

import ast
import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import neat_edge
from neat_edge.bundle import open_bundle, resolve_inside
from neat_edge.errors import NeatError
from neat_edge.runtimes import open_session
from tests.fuzzing import clone_bundle, replace_file, write_manifest


@pytest.fixture
def work(bundle_dir, tmp_path):
    return clone_bundle(bundle_dir, tmp_path / "bundle")


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / "neat.json").read_text())


def resign(bundle: Path, manifest: dict) -> None:
    for rel in manifest["files"]:
        if (bundle / rel).is_file():
            manifest["files"][rel] = hashlib.sha256((bundle / rel).read_bytes()).hexdigest()
    write_manifest(bundle, manifest)


def test_every_file_is_checked_and_named(work):
    for rel in manifest_of(work)["files"]:
        f = work / rel
        original = f.read_bytes()
        data = bytearray(original)
        data[len(data) // 2] ^= 0x01
        replace_file(f, bytes(data))
        with pytest.raises(NeatError, match=f"{rel} differs from the manifest"):
            open_bundle(work)
        replace_file(f, original)
    open_bundle(work)


@pytest.mark.parametrize("field, value", [
    (("graphs", "onnx", "file"), "../outside/step.onnx"),
    (("graphs", "onnx", "file"), "/tmp/step.onnx"),
    (("graphs", "onnx", "file"), "experts/../../outside/step.onnx"),
    (("initial_state",), "../outside/initial_state.safetensors"),
    (("checkpoint",), ".."),
    (("images", "graphs", "onnx", "file"), "../outside/image_decoder.onnx"),
    (("experts", 0, "file"), "../../../etc/passwd"),
])
def test_manifest_paths_outside_the_bundle_are_refused(work, tmp_path, field, value):
    (tmp_path / "outside").mkdir(exist_ok=True)
    for name in ("step.onnx", "initial_state.safetensors", "image_decoder.onnx"):
        (tmp_path / "outside" / name).write_bytes((work / name).read_bytes())
    manifest = manifest_of(work)
    node = manifest
    for key in field[:-1]:
        node = node[key]
    node[field[-1]] = value
    write_manifest(work, manifest)
    with pytest.raises(NeatError, match="outside the bundle"):
        open_session(work)


def test_a_listed_path_outside_the_bundle_is_refused(work, tmp_path):
    (tmp_path / "outside.bin").write_bytes(b"x")
    manifest = manifest_of(work)
    manifest["files"]["../outside.bin"] = hashlib.sha256(b"x").hexdigest()
    write_manifest(work, manifest)
    with pytest.raises(NeatError, match="outside the bundle"):
        open_bundle(work)


@pytest.mark.parametrize("rel", ["step.onnx", "initial_state.safetensors", "checkpoint"])
def test_symlinks_that_leave_the_bundle_are_refused(work, tmp_path, rel):
    """The content is the right one (a copy), the place is not: refused all the same."""
    import shutil

    target = tmp_path / "elsewhere" / rel
    target.parent.mkdir(exist_ok=True)
    (shutil.copytree if (work / rel).is_dir() else shutil.copyfile)(work / rel, target)
    (shutil.rmtree if (work / rel).is_dir() else os.unlink)(work / rel)
    (work / rel).symlink_to(target)
    with pytest.raises(NeatError, match="leaves the bundle"):
        open_session(work, "torch" if rel == "checkpoint" else "onnxruntime")


def test_symlinks_inside_the_bundle_are_fine(work, bundle_dir):
    os.rename(work / "step.onnx", work / "graph-v1.onnx")
    (work / "step.onnx").symlink_to("graph-v1.onnx")
    np.testing.assert_array_equal(open_session(work).score(b"abc"), open_session(bundle_dir).score(b"abc"))
    assert resolve_inside(work, "step.onnx") == (work / "graph-v1.onnx").resolve()


def test_unlisted_files_are_never_read(work):
    """A file the checksums do not cover, in a folder a loader reads, is refused by that loader."""
    (work / "checkpoint" / "dispatch_head.safetensors").write_bytes(b"not covered by the manifest")
    open_session(work, "onnxruntime")  # the ONNX Runtime path never reads checkpoint/
    with pytest.raises(NeatError, match="not listed in the manifest's checksums"):
        open_session(work, "torch")


def test_graph_whose_inputs_disagree_with_the_manifest(work):
    """step.onnx replaced by another graph and the checksums re-signed: its inputs give it away."""
    manifest = manifest_of(work)
    replace_file(work / "step.onnx", (work / "image_decoder.onnx").read_bytes())
    resign(work, manifest)
    with pytest.raises(NeatError, match="disagrees with the manifest"):
        open_session(work)


def test_state_input_renamed_in_the_manifest(work):
    manifest = manifest_of(work)
    graph = manifest["graphs"]["onnx"]
    graph["inputs"][4]["name"] = "state.renamed"
    graph["state"][0]["input"] = "state.renamed"
    write_manifest(work, manifest)
    with pytest.raises(NeatError, match="state.renamed"):
        open_session(work)


def test_manifest_config_must_match_the_checkpoint(work):
    manifest = manifest_of(work)
    manifest["config"]["segment_len"] = 64
    manifest.pop("fingerprint")
    decode = manifest.pop("decode")  # its segment geometry would be refused first
    write_manifest(work, manifest)
    with pytest.raises(NeatError, match="differs from checkpoint/config.json"):
        open_bundle(work)
    manifest["decode"] = decode  # the decode section must agree with the manifest's config too
    write_manifest(work, manifest)
    with pytest.raises(NeatError, match="'decode.segment_len' is 128, the config's is 64"):
        open_bundle(work)


def test_external_data_outside_the_graph_folder_is_refused(tmp_path):
    from onnx import TensorProto, helper

    from neat_edge.runtimes.onnxruntime import OnnxRuntimeBackend
    from neat_edge.spec import GraphSpec, TensorSpec

    (tmp_path / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
    folder = tmp_path / "graph"
    folder.mkdir()
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], vals=[1.0] * 4)
    del weight.float_data[:]  # its data lives in the external file instead
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight])
    (folder / "g.onnx").write_bytes(helper.make_model(graph).SerializeToString())
    spec = GraphSpec("g", (TensorSpec("x", "float32", (4,)),), (TensorSpec("y", "float32", (4,)),))
    with pytest.raises(NeatError, match="outside the graph's folder"):
        OnnxRuntimeBackend(folder / "g.onnx", spec)


# --- never pickle ----------------------------------------------------------------------------------
UNPICKLERS = {("torch", "load"), ("pickle", "load"), ("pickle", "loads"), ("np", "load"), ("numpy", "load"),
              ("joblib", "load"), ("dill", "load"), ("dill", "loads"), ("marshal", "load"), ("marshal", "loads"),
              ("shelve", "open"), ("jit", "load"), ("torch", "package")}


def test_no_code_path_can_unpickle():
    """No module of the package calls an unpickler (torch.load, pickle, numpy.load, ...) or imports one."""
    found = []
    for f in sorted(Path(neat_edge.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    (node.value.id, node.attr) in UNPICKLERS:
                found.append(f"{f.name}:{node.lineno} {node.value.id}.{node.attr}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                    [a.name for a in node.names]
                found += [f"{f.name}:{node.lineno} import {n}" for n in names if n in ("pickle", "dill", "joblib",
                                                                                         "shelve", "cloudpickle")]
    assert not found, found


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def test_pickles_in_place_of_safetensors_are_never_run(work, bundle_dir, tmp_path):
    """A pickle that writes a file when unpickled, put where every loader reads tensors (with the
    bundle's checksums re-signed), and given as a state file: each load is refused, the file never appears."""
    from neat_edge.experts import load_expert

    marker = tmp_path / "unpickled.txt"
    payload = pickle.dumps(_Payload(marker))
    manifest = manifest_of(work)
    for rel in ("initial_state.safetensors", "checkpoint/model.safetensors", "experts/python.safetensors"):
        replace_file(work / rel, payload)
    resign(work, manifest)
    for backend in ("onnxruntime", "torch"):
        with pytest.raises(NeatError):
            open_session(work, backend)
    with pytest.raises(NeatError):
        load_expert(work / "experts" / "python.safetensors")
    state = tmp_path / "state.safetensors"
    state.write_bytes(payload)
    with pytest.raises(NeatError, match="corrupted state file"):
        open_session(bundle_dir).load_state(state)
    assert not marker.exists()
