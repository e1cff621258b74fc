"""Fuzzed bundles: mutated manifests (wrong types, missing and extra keys, huge or negative shapes, other
versions, state names that do not match the graph, paths that leave the bundle) and mutated files
(missing, extra, swapped, truncated, bit-flipped, links), with and without the checksums re-signed.

Every case ends in a NeatError, or the session it opens scores a probe exactly as the untouched bundle
does (the same graph, the same numbers): a mutation the loader accepts must not change a result.
"""

import copy
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import strategies as st

from neat_edge.errors import NeatError
from neat_edge.runtimes import open_session
from tests.fuzzing import clone_bundle, fuzz, outcome, replace_file, sizes, write_manifest

PROBE = b"def fuzz(bundle):\n    return bundle  # \xff\x00 bytes"
# torch (2 s to open a session, the only reader of checkpoint/) in about one case in 40; hypothesis
# favours the first element of sampled_from, so onnxruntime comes first
BACKENDS = st.sampled_from(["onnxruntime"] * 39 + ["torch"])


@pytest.fixture(scope="module")
def reference(bundle_dir):
    """The probe's log-probs from the untouched bundle, per backend, and the untouched manifest."""
    manifest = json.loads((bundle_dir / "neat.json").read_text())
    return {b: open_session(bundle_dir, b).score(PROBE) for b in ("onnxruntime", "torch")}, manifest


def json_values():
    leaves = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.integers(-3, 300)
              | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
              | st.sampled_from(["", "step.onnx", "float32", "batch", "state.byte_context", "fixed", "entropy"]))
    return st.recursive(leaves, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                        max_leaves=6)


RELATIVE_PATHS = st.one_of(
    st.sampled_from(["../step.onnx", "/etc/passwd", "checkpoint/../../x", "./step.onnx", "step.onnx/", ".", "",
                     "C:\\step.onnx", "experts/../step.onnx", "step.onnx\0", "//step.onnx", "checkpoint",
                     "image_decoder.onnx", "initial_state.safetensors", "no/such/file", "neat.json"]),
    st.text(alphabet=st.sampled_from(list("./\\~:ab\0é")), max_size=12))


def tree_paths(node, prefix=()):
    """Every (path, is_dict) in a JSON tree."""
    yield prefix, isinstance(node, dict)
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in children:
        yield from tree_paths(value, (*prefix, key))


def navigate(node, path):
    for key in path:
        node = node[key]
    return node


def manifest_ops(manifest):
    paths = [p for p, _ in tree_paths(manifest) if p]
    dicts = [p for p, is_dict in tree_paths(manifest) if is_dict]
    dims = [(*p, "shape", i) for p, _ in tree_paths(manifest) if len(p) >= 2 and p[-2] in ("inputs", "outputs")
            for i in range(len(navigate(manifest, p)["shape"]))]
    names = [(*p, "name") for p, _ in tree_paths(manifest) if len(p) >= 2 and p[-2] in ("inputs", "outputs")]
    path_fields = [p for p, _ in tree_paths(manifest) if p and p[-1] in ("file", "initial_state", "checkpoint", "engine")]
    state_names = sorted({n for p in names for n in [navigate(manifest, p)] if "state." in n})
    op = st.one_of(
        st.tuples(st.just("set"), st.sampled_from(paths), json_values()),
        st.tuples(st.just("delete"), st.sampled_from(paths)),
        st.tuples(st.just("add"), st.sampled_from(dicts), st.text(max_size=8), json_values()),
        st.tuples(st.just("set"), st.sampled_from(dims), st.one_of(st.integers(-(2**65), 2**65), st.integers(-2, 2),
                                                                   st.sampled_from([0, 1, 4, 5248, 2**31, "batch", ""]))),
        st.tuples(st.just("set"), st.sampled_from(names), st.sampled_from(state_names + ["state.x", "", "bytes"])),
        st.tuples(st.just("set"), st.sampled_from(path_fields), RELATIVE_PATHS),
        st.tuples(st.just("set"), st.just(("format_version",)), st.one_of(st.integers(-5, 5), st.booleans(),
                                                                         st.text(max_size=3), st.floats())),
        st.tuples(st.just("swap"), st.sampled_from(paths), st.sampled_from(paths)),
    )
    return st.tuples(st.lists(op, min_size=1, max_size=3), BACKENDS)


def apply_op(manifest, op):
    kind, path = op[0], op[1]
    try:
        parent, key = navigate(manifest, path[:-1]), path[-1] if path else None
        if kind == "set":
            parent[key] = op[2]
        elif kind == "delete":
            del parent[key]
        elif kind == "add":
            navigate(manifest, path)[op[2]] = op[3]
        elif kind == "swap":
            other_parent, other_key = navigate(manifest, op[2][:-1]), op[2][-1]
            parent[key], other_parent[other_key] = copy.deepcopy(other_parent[other_key]), copy.deepcopy(parent[key])
    except (KeyError, IndexError, TypeError):  # an earlier op removed or retyped this path: skip it
        pass


def open_and_score(bundle, backend, reference, resigned: bool = False):
    """Open the mutated bundle and score the probe. Unless its checksums were re-signed after the
    mutation, an accepted bundle must give the reference log-probs exactly; a re-signed one is a
    consistent (other) bundle: it must give finite log-probs of the right shape, or stop with a NeatError."""
    try:
        session = open_session(bundle, backend)
        logp = session.score(PROBE)
    except NeatError:
        outcome("bundles", refused=True)
        return
    outcome("bundles", refused=False)
    if resigned:
        assert logp.shape == (len(PROBE),) and np.isfinite(logp).all()
    else:
        np.testing.assert_array_equal(logp, reference[0][backend])


@sizes(ci=130, slow=1600)
def test_fuzz_manifest_fields(bundle_dir, reference, tmp_path, examples, slow):
    work = tmp_path / "b"

    def check(case):
        ops, backend = case
        clone_bundle(bundle_dir, work)
        manifest = copy.deepcopy(reference[1])
        for op in ops:
            apply_op(manifest, op)
        write_manifest(work, manifest)
        open_and_score(work, backend, reference)

    fuzz("bundles", manifest_ops(reference[1]), check, examples, slow)


def manifest_bytes_ops():
    return st.tuples(st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert"]), st.floats(0, 1), st.integers(0, 7),
                                        st.binary(max_size=4)), min_size=1, max_size=4), BACKENDS)


@sizes(ci=30, slow=400)
def test_fuzz_manifest_bytes(bundle_dir, reference, tmp_path, examples, slow):
    work = tmp_path / "b"
    raw = (bundle_dir / "neat.json").read_bytes()

    def check(case):
        ops, backend = case
        data = bytearray(raw)
        for kind, where, bit, extra in ops:
            i = min(int(where * len(data)), max(len(data) - 1, 0))
            if kind == "flip" and data:
                data[i] ^= 1 << bit
            elif kind == "cut":
                del data[i:]
            else:
                data[i:i] = extra
        clone_bundle(bundle_dir, work)
        replace_file(work / "neat.json", bytes(data))
        open_and_score(work, backend, reference)

    fuzz("bundles", manifest_bytes_ops(), check, examples, slow)


def bundle_files(bundle: Path) -> list[str]:
    return sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file() and p.name != "neat.json")


def file_ops(files):
    name = st.text(alphabet=st.sampled_from(list("abc._-é")), min_size=1, max_size=10)
    op = st.one_of(
        st.tuples(st.just("delete"), st.sampled_from(files)),
        st.tuples(st.just("truncate"), st.sampled_from(files), st.floats(0, 1)),
        st.tuples(st.just("flip"), st.sampled_from(files), st.floats(0, 1), st.integers(0, 7)),
        st.tuples(st.just("garbage"), st.sampled_from(files), st.binary(max_size=64)),
        st.tuples(st.just("swap"), st.sampled_from(files), st.sampled_from(files)),
        st.tuples(st.just("extra"), st.sampled_from(["", "checkpoint", "experts"]), name,
                  st.sampled_from(["", ".safetensors", ".onnx", ".json"]), st.binary(max_size=64)),
        st.tuples(st.just("link_out"), st.sampled_from(files)),
        st.tuples(st.just("link_in"), st.sampled_from(files), st.sampled_from(files)),
    )
    # resign: the manifest's checksums are recomputed after the mutation (a consistent tamper)
    return st.tuples(st.lists(op, min_size=1, max_size=2), st.booleans(), BACKENDS)


def apply_file_op(bundle: Path, outside: Path, op) -> None:
    kind, rel = op[0], op[1]
    f = bundle / rel
    if kind in ("delete", "truncate", "flip", "garbage", "link_out") and not f.is_file():
        return
    if kind == "delete":
        f.unlink()
    elif kind == "truncate":
        replace_file(f, f.read_bytes()[: int(op[2] * f.stat().st_size)])
    elif kind == "flip":
        data = bytearray(f.read_bytes())
        if data:
            data[min(int(op[2] * len(data)), len(data) - 1)] ^= 1 << op[3]
        replace_file(f, bytes(data))
    elif kind == "garbage":
        replace_file(f, op[2])
    elif kind == "swap" and (bundle / op[2]).is_file() and f.is_file():
        a, b = f.read_bytes(), (bundle / op[2]).read_bytes()
        replace_file(f, b)
        replace_file(bundle / op[2], a)
    elif kind == "extra":
        target = bundle / op[1] / (op[2] + op[3])
        target.parent.mkdir(exist_ok=True)
        if not target.is_dir():
            replace_file(target, op[4])
    elif kind == "link_out":  # a link to an identical copy outside: the content is right, the place is not
        copy_out = outside / f"{abs(hash(rel))}-{f.name}"
        copy_out.write_bytes(f.read_bytes())
        f.unlink()
        f.symlink_to(copy_out)
    elif kind == "link_in" and (bundle / op[2]).exists() and op[2] != rel:
        f.unlink(missing_ok=True)
        f.symlink_to(os.path.relpath(bundle / op[2], f.parent))


def resign(bundle: Path) -> None:
    """Recompute the manifest's sha256 of every listed file that still exists."""
    manifest = json.loads((bundle / "neat.json").read_text())
    for rel in manifest["files"]:
        f = bundle / rel
        if f.is_file():
            manifest["files"][rel] = hashlib.sha256(f.read_bytes()).hexdigest()
    write_manifest(bundle, manifest)


@sizes(ci=100, slow=1300)
def test_fuzz_bundle_files(bundle_dir, reference, tmp_path, examples, slow):
    work, outside = tmp_path / "b", tmp_path / "outside"
    outside.mkdir()
    files = bundle_files(bundle_dir)

    def check(case):
        ops, resigned, backend = case
        clone_bundle(bundle_dir, work)
        for op in ops:
            apply_file_op(work, outside, op)
        if resigned:
            resign(work)
        open_and_score(work, backend, reference, resigned)

    fuzz("bundles", file_ops(files), check, examples, slow)
