"""Fuzzed Transformer² expert files and dispatch heads: corrupted bytes, edited tensors and metadata
(re-signed), files that are links leaving the bundle or have names that are not expert names.

Oracle: an expert the library cannot use is skipped with its reason (dispatching to it is a NeatError);
one it uses has exactly the z of the file it came from, or, edited, finite z of the right shape. A
dispatch head is applied exactly, ignored with a warning (other base weights) or refused (NeatError),
and a refused or ignored head leaves the model's head as it was.
"""

import copy
import shutil
import warnings

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

from neat_edge.errors import NeatError
from neat_edge.experts import (
    DISPATCH_HEAD_FILE,
    ExpertLibrary,
    apply_dispatch_head,
    load_expert,
    save_dispatch_head,
    save_expert,
)
from neat_edge.model.checkpoint import DEFAULT_CHECKPOINT
from neat_edge.tensorfile import read_tensors, write_tensors
from tests.fuzzing import fuzz, outcome, sizes
from tests.test_fuzz_states import corrupt, corruption_ops


@pytest.fixture(scope="module")
def expert_setup(bundle_dir, tmp_path_factory):
    """A digest-carrying copy of the bundle's python expert and the library settings to load it with."""
    import json

    folder = tmp_path_factory.mktemp("experts")
    manifest = json.loads((bundle_dir / "neat.json").read_text())
    shipped = load_expert(bundle_dir / "experts" / "python.safetensors")
    meta = {k: v for k, v in shipped.metadata.items() if k not in ("format", "name", "domain")}
    path = save_expert(folder / "python.safetensors", shipped.domain, shipped.z, meta)
    return path, shipped.z, manifest["svf_layout"], manifest["svf_base_id"]


def library_outcome(folder, layout, base_id, name="python", root=None):
    """(expert or None, why skipped) for `name` in a library over `folder`."""
    library = ExpertLibrary(folder, layout, base_id, root=root)
    if name in library.experts:
        outcome("experts", refused=False)
        return library.experts[name], None
    outcome("experts", refused=True)
    with pytest.raises(NeatError):
        library.get(name)
    return None, library.skipped.get(f"{name}.safetensors", "not found")


@sizes(ci=80, slow=800)
def test_fuzz_corrupted_expert_bytes(expert_setup, tmp_path, examples, slow):
    path, z, layout, base_id = expert_setup
    raw = path.read_bytes()
    folder = tmp_path / "lib"
    folder.mkdir()

    def check(case):
        _, ops = case
        data = corrupt(raw, ops)
        (folder / "python.safetensors").write_bytes(data)
        expert, _ = library_outcome(folder, layout, base_id)
        if expert is not None or data == raw:  # used: only as the file was written (the digest says so)
            assert expert is not None and set(expert.z) == set(z)
            assert all(np.array_equal(expert.z[k], z[k]) for k in z)

    fuzz("experts", corruption_ops(), check, examples, slow)


def expert_edit_ops():
    op = st.one_of(
        st.tuples(st.just("dtype"), st.integers(0, 99), st.sampled_from(["float16", "float64", "int64", "uint8", "bool"])),
        st.tuples(st.just("shape"), st.integers(0, 99), st.sampled_from(["grow", "shrink", "2d", "scalar"])),
        st.tuples(st.just("nonfinite"), st.integers(0, 99), st.sampled_from([np.nan, np.inf, -np.inf])),
        st.tuples(st.just("drop"), st.integers(0, 99)),
        st.tuples(st.just("extra"), st.sampled_from(["not.a.layer", "latent.layers.9.attn.q", ""])),
        st.tuples(st.just("meta"), st.sampled_from(["format", "base_id", "domain", "name"]),
                  st.one_of(st.sampled_from(["neat-expert/1", "neat-expert/2", "", "eec10cde482421f5", "0" * 16]),
                            st.text(max_size=8))),
        st.tuples(st.just("drop_meta"), st.sampled_from(["format", "base_id", "domain"])),
        st.tuples(st.just("filename"), st.sampled_from(["-bad", ".hidden", "a b", "ok_name", "é"])),
    )
    return st.lists(op, min_size=1, max_size=3)


def apply_expert_edit(tensors, meta, op) -> None:
    """Apply one edit (edits may undo each other: the verdict is taken on the final file)."""
    kind = op[0]
    if kind == "meta":
        meta[op[1]] = op[2]
    elif kind == "drop_meta":
        meta.pop(op[1], None)
    elif kind == "extra":
        tensors[op[1]] = np.ones(4, np.float32)
    elif kind != "filename":
        name = sorted(tensors)[op[1] % len(tensors)]
        t = tensors[name]
        with np.errstate(all="ignore"):
            if kind == "drop":
                del tensors[name]
            elif kind == "dtype":
                tensors[name] = t.astype(op[2])
            elif kind == "shape" and t.ndim:
                tensors[name] = np.ascontiguousarray({"grow": np.append(t, 1), "shrink": t[:-1], "2d": t[None],
                                                      "scalar": np.asarray(t.reshape(-1)[0])}[op[2]])
            elif kind == "nonfinite" and t.dtype.kind == "f" and t.size:
                tensors[name] = t.copy()
                tensors[name].reshape(-1)[t.size // 2] = op[2]


def expert_verdict(tensors, meta, file_name, z, layout, base_id) -> str:
    """What the library must do with the final file: 'refuse', 'same' (the original z) or 'valid'."""
    from neat_edge.experts import NAME_RE

    if not NAME_RE.match(file_name) or meta.get("format") != "neat-expert/1" or meta.get("base_id") not in (None, base_id):
        return "refuse"
    if any(t.ndim != 1 or t.dtype.kind != "f" or not np.isfinite(t).all() for t in tensors.values()):
        return "refuse"
    if any(e["name"] not in tensors or tensors[e["name"]].shape != (e["rank"],) for e in layout):
        return "refuse"
    return "same" if all(np.array_equal(tensors[k].astype(np.float32), z[k]) for k in z) else "valid"


@sizes(ci=80, slow=800)
def test_fuzz_edited_expert_files(expert_setup, tmp_path, examples, slow):
    path, z, layout, base_id = expert_setup
    folder = tmp_path / "lib"

    def check(ops):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        tensors, meta = read_tensors(path, "expert file")
        meta = {k: v for k, v in meta.items() if k != "content_sha256"}
        file_name = next((op[1] for op in reversed(ops) if op[0] == "filename"), "python")
        for op in ops:
            apply_expert_edit(tensors, meta, op)
        write_tensors(folder / f"{file_name}.safetensors", tensors, meta, "expert file")
        expected = expert_verdict(tensors, meta, file_name, z, layout, base_id)
        expert, why = library_outcome(folder, layout, base_id, file_name)
        if expected == "refuse":
            assert expert is None, f"used an expert edited by {ops}"
        else:
            assert expert is not None, (ops, why)
            flat = expert.flat(layout)
            assert flat.dtype == np.float32 and np.isfinite(flat).all()
            if expected == "same":
                assert all(np.array_equal(expert.z[k], z[k]) for k in z)

    fuzz("experts", expert_edit_ops(), check, examples, slow)


def test_expert_links_leaving_the_bundle_are_skipped(expert_setup, tmp_path):
    path, _, layout, base_id = expert_setup
    root, outside = tmp_path / "bundle", tmp_path / "outside"
    (root / "experts").mkdir(parents=True)
    outside.mkdir()
    shutil.copyfile(path, outside / "python.safetensors")
    (root / "experts" / "python.safetensors").symlink_to(outside / "python.safetensors")
    expert, why = library_outcome(root / "experts", layout, base_id, root=root)
    assert expert is None and "leaves the bundle" in why


@pytest.fixture(scope="module")
def head_setup(model, tmp_path_factory):
    """A copy of the default model, its dispatch head re-saved with a digest, and the head's weights."""
    from neat_edge.experts import base_model_id

    model = copy.deepcopy(model)
    folder = tmp_path_factory.mktemp("head")
    tensors, meta = read_tensors(DEFAULT_CHECKPOINT / DISPATCH_HEAD_FILE, "dispatch head", require_digest=False)
    import json

    extra = {k: v for k, v in meta.items() if k not in ("format", "experts", "base_id")}
    path = save_dispatch_head(folder / DISPATCH_HEAD_FILE, tensors["weight"], tensors["bias"],
                              json.loads(meta["experts"]), base_model_id(model), extra)
    return model, path, {k: torch.from_numpy(v.copy()) for k, v in tensors.items()}


def head_ops():
    edit = st.one_of(
        st.tuples(st.just("dtype"), st.sampled_from(["weight", "bias"]), st.sampled_from(["float64", "int32", "float16"])),
        st.tuples(st.just("shape"), st.sampled_from(["weight", "bias"]), st.sampled_from(["grow", "shrink", "flat"])),
        st.tuples(st.just("nonfinite"), st.sampled_from(["weight", "bias"]), st.sampled_from([np.nan, np.inf])),
        st.tuples(st.just("drop"), st.sampled_from(["weight", "bias"])),
        st.tuples(st.just("meta"), st.sampled_from(["format", "experts", "base_id"]),
                  st.sampled_from(["", "[]", '["prose"]', '["a", "b", "c", "d", "e"]', "{", "[1]", "neat-dispatch-head/2",
                                   "0" * 16])),
    )
    return st.one_of(st.tuples(st.just("corrupt"), corruption_ops()), st.tuples(st.just("edit"), st.lists(edit, min_size=1,
                                                                                                           max_size=2)))


@sizes(ci=50, slow=500)
def test_fuzz_dispatch_heads(head_setup, tmp_path, examples, slow):
    model, path, original = head_setup
    raw = path.read_bytes()

    def check(case):
        with torch.no_grad():  # every case starts from the untouched head
            model.dispatch_head.weight.copy_(original["weight"])
            model.dispatch_head.bias.copy_(original["bias"])
        target = tmp_path / DISPATCH_HEAD_FILE
        if case[0] == "corrupt":
            target.write_bytes(corrupt(raw, case[1][1]))
            same_file = target.read_bytes() == raw
        else:
            tensors, meta = read_tensors(path, "dispatch head")
            meta = dict(meta)
            meta.pop("content_sha256")
            for op in case[1]:
                if op[0] == "meta":
                    meta[op[1]] = op[2]
                elif op[0] == "drop":
                    tensors.pop(op[1], None)
                elif op[1] in tensors:
                    t = tensors[op[1]]
                    if op[0] == "dtype":
                        t = t.astype(op[2])
                    elif op[0] == "shape":
                        t = {"grow": np.concatenate([t, t[:1]]), "shrink": t[1:], "flat": t.reshape(-1)}[op[2]]
                    else:
                        t = t.copy()
                        t.reshape(-1)[0] = op[2]
                    tensors[op[1]] = np.ascontiguousarray(t)
            write_tensors(target, tensors, meta, "dispatch head")
            same_file = False
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                apply_dispatch_head(model, tmp_path)
                refused = False
            except NeatError:
                refused = True
        applied = not refused and not caught
        outcome("experts", refused=not applied)
        head = model.dispatch_head
        if not applied:  # refused or ignored: the head is the model's own
            assert torch.equal(head.weight, original["weight"]) and torch.equal(head.bias, original["bias"])
        assert torch.isfinite(head.weight).all() and torch.isfinite(head.bias).all()
        if same_file:
            assert applied and torch.equal(head.weight, original["weight"])

    fuzz("experts", head_ops(), check, examples, slow)
