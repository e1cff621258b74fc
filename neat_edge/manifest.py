"""The shape of a bundle manifest (`neat.json`), checked before anything it names is opened.

A manifest comes from elsewhere: every field the runtimes read is checked for its type and range here,
and the fields that must agree with each other (config, fingerprint, graph specs, state pairs, patching,
image grid, SVF layout) are cross-checked, so that a mutated manifest ends in one NeatError naming the
field instead of a TypeError deep inside a session. Paths and checksums are bundle.py's.
"""

from __future__ import annotations

import math
import re

from neat_edge.config import NeatConfig
from neat_edge.errors import NeatError
from neat_edge.spec import CACHE_IN, CACHE_OUT, STATE_IN, STATE_OUT

# Keys whose string values are paths relative to the bundle, wherever they appear in the manifest
# (a graph entry's file / engine / trtexec recipe / timing cache, an expert's file, the initial state,
# the checkpoint folder; later graph sections are covered as long as they use these keys).
PATH_KEYS = frozenset({"file", "engine", "trtexec", "timing_cache", "initial_state", "checkpoint"})
# Sections that record provenance (where the parity corpus or calibration files were on the exporting
# machine): never opened, so their strings are not bundle paths.
PROVENANCE = frozenset({"config", "parity", "tools", "calibration", "svf_truncation_error"})
DTYPES = frozenset({"float32", "float16", "int64", "int32", "bool", "uint8", "int8"})
MAX_FILES = 1 << 14
MAX_DIM = 1 << 31  # larger fixed dimensions are no real graph's and would only make allocations fail
SHA256 = re.compile(r"^[0-9a-f]{64}$")
STEP_INPUTS = ("bytes", "patch_ids", "patch_mask", "svf_z")


class Where:
    """Builds the one-line error for a bad field: the manifest's path and the field's dotted name."""

    def __init__(self, manifest_path):
        self.path = manifest_path

    def fail(self, field: str, why: str):
        raise NeatError(f"bad bundle manifest {self.path}: '{field}' {why}")

    def typed(self, value, kind, field: str, optional: bool = False):
        if value is None and optional:
            return None
        if kind is int:  # JSON true / false are Python ints: never a count or a size
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = isinstance(value, kind)
        if not ok:
            name = {int: "an integer", float: "a finite number", str: "a string", dict: "an object",
                    list: "a list", bool: "true or false"}[kind]
            self.fail(field, f"must be {name}, got {type(value).__name__} {str(value)[:60]!r}")
        return value


def check_manifest(manifest, path) -> NeatConfig:
    """Check a parsed manifest (format and version already checked); returns its config."""
    w = Where(path)
    w.typed(manifest, dict, "(top level)")
    config_dict = w.typed(manifest.get("config"), dict, "config")
    try:
        config = NeatConfig.from_dict(config_dict)
    except (TypeError, ValueError) as exc:
        w.fail("config", f"is not a valid config: {exc}")
    except NeatError as exc:
        w.fail("config", f"is not a valid config: {exc}")
    fingerprint = w.typed(manifest.get("fingerprint"), str, "fingerprint", optional=True)
    if fingerprint is not None and fingerprint != config.fingerprint():
        w.fail("fingerprint", f"is {fingerprint}, but the config's is {config.fingerprint()}")
    files = w.typed(manifest.get("files", {}), dict, "files")
    if len(files) > MAX_FILES:  # each is resolved and hashed: a bundle has tens
        w.fail("files", f"lists {len(files):,} files (at most {MAX_FILES:,})")
    for rel, digest in files.items():
        if not isinstance(digest, str) or not SHA256.match(digest):
            w.fail(f"files.{rel}", "must be a sha256 digest (64 lowercase hex digits)")
    w.typed(manifest.get("initial_state"), str, "initial_state")
    w.typed(manifest.get("checkpoint"), str, "checkpoint")
    graphs = w.typed(manifest.get("graphs"), dict, "graphs")
    for target, entry in graphs.items():
        check_step_entry(w, f"graphs.{target}", entry, config, manifest)
    check_patching(w, manifest.get("patching"), config)
    check_images(w, manifest.get("images"), config)
    check_decode(w, manifest.get("decode"), config)
    check_experts(w, manifest)
    return config


def check_tensor(w: Where, at: str, t, seen) -> str:
    """A named tensor (a graph input / output, a decode cache): a new non-empty name, a known dtype, and a
    shape of sizes in 0..2^31 or axis names. Returns its name."""
    w.typed(t, dict, at)
    name = w.typed(t.get("name"), str, f"{at}.name")
    if not name or name in seen:
        w.fail(f"{at}.name", f"{name!r} is empty or named twice")
    if not isinstance(t.get("dtype"), str) or t["dtype"] not in DTYPES:
        w.fail(f"{at}.dtype", f"{t.get('dtype')!r} is not one of {', '.join(sorted(DTYPES))}")
    for d in w.typed(t.get("shape"), list, f"{at}.shape"):
        if isinstance(d, str) and d:
            continue
        if not isinstance(d, int) or isinstance(d, bool) or not 0 <= d < MAX_DIM:
            w.fail(f"{at}.shape", f"has dimension {str(d)[:40]!r}: a size in 0..2^31 or an axis name")
    return name


def check_graph_entry(w: Where, field: str, entry) -> dict:
    """A graph entry: its file and a well-formed spec (names, dtypes, shapes, state pairs)."""
    w.typed(entry, dict, field)
    w.typed(entry.get("file"), str, f"{field}.file")
    w.typed(entry.get("name"), str, f"{field}.name")
    tensors = {}
    for io in ("inputs", "outputs"):
        items = w.typed(entry.get(io), list, f"{field}.{io}")
        if not items:
            w.fail(f"{field}.{io}", "is empty")
        for i, t in enumerate(items):
            at = f"{field}.{io}[{i}]"
            name = check_tensor(w, at, t, tensors)
            tensors[name] = (io, t["dtype"], t["shape"])
    for i, pair in enumerate(w.typed(entry.get("state", []), list, f"{field}.state")):
        at = f"{field}.state[{i}]"
        w.typed(pair, dict, at)
        src, dst = pair.get("input"), pair.get("output")
        if not (isinstance(src, str) and tensors.get(src, ("",))[0] == "inputs"
                and isinstance(dst, str) and tensors.get(dst, ("",))[0] == "outputs"):
            w.fail(at, f"pairs {str(src)[:60]!r} -> {str(dst)[:60]!r}, which are not an input and an output of the graph")
        if tensors[src][1:] != tensors[dst][1:]:
            w.fail(at, f"pairs {src} and {dst}, whose dtypes or shapes differ")
    return tensors


def check_step_entry(w: Where, field: str, entry, config: NeatConfig, manifest: dict) -> None:
    """A step graph: the inputs every session feeds, outputs sized by the config, state paired by name."""
    tensors = check_graph_entry(w, field, entry)
    for name in STEP_INPUTS:
        if tensors.get(name, ("",))[0] != "inputs":
            w.fail(f"{field}.inputs", f"has no '{name}' input")
    z_shape = tensors["svf_z"][2]
    if len(z_shape) != 1 or not isinstance(z_shape[0], int):
        w.fail(f"{field}.inputs", "'svf_z' must have one fixed dimension")
    rank = w.typed(manifest.get("svf_rank"), int, "svf_rank", optional=True)
    if rank is not None and z_shape != [rank]:
        w.fail(f"{field}.inputs", f"'svf_z' has shape {tensors['svf_z'][2]}, svf_rank is {rank}")
    sizes = {"byte_logprobs": config.vocab_size, "image_logits": config.image_codebook_size,
             "dispatch_logits": config.n_experts}
    for name, size in sizes.items():
        got = tensors.get(name)
        if got is None or got[0] != "outputs" or not got[2] or got[2][-1] != size:
            w.fail(f"{field}.outputs", f"'{name}' is missing or its last dimension is not {size} (the config's)")
    pairs = {(p["input"], p["output"]) for p in entry.get("state", [])}
    for name, (io, _, _) in tensors.items():
        if io == "inputs" and name.startswith(STATE_IN) and (name, STATE_OUT + name[len(STATE_IN):]) not in pairs:
            w.fail(f"{field}.state", f"does not pair state input '{name}' with '{STATE_OUT}{name[len(STATE_IN):]}'")


def check_patching(w: Where, patching, config: NeatConfig) -> None:
    if patching is None:
        return
    w.typed(patching, dict, "patching")
    kind = patching.get("kind")
    if kind != config.patching:
        w.fail("patching.kind", f"is {str(kind)[:40]!r}, the config's patching is '{config.patching}'")
    if kind == "fixed":
        if w.typed(patching.get("patch_size"), int, "patching.patch_size") != config.patch_size:
            w.fail("patching.patch_size", f"is {patching['patch_size']}, the config's is {config.patch_size}")
        return
    w.typed(patching.get("threshold"), float, "patching.threshold")
    w.typed(patching.get("relative_threshold"), float, "patching.relative_threshold", optional=True)
    for key in ("max_patch_len", "entropy_context_len"):
        if not 1 <= w.typed(patching.get(key), int, f"patching.{key}") < MAX_DIM:
            w.fail(f"patching.{key}", "must be at least 1")
    for target, entry in w.typed(patching.get("graphs", {}), dict, "patching.graphs").items():
        check_graph_entry(w, f"patching.graphs.{target}", entry)


def check_images(w: Where, images, config: NeatConfig) -> None:
    if images is None:
        return
    w.typed(images, dict, "images")
    for key, want in (("grid", config.image_grid), ("codebook_size", config.image_codebook_size),
                      ("image_size", config.image_size)):
        if w.typed(images.get(key), int, f"images.{key}") != want:
            w.fail(f"images.{key}", f"is {images[key]}, the config's is {want}")
    for target, entry in w.typed(images.get("graphs", {}), dict, "images.graphs").items():
        check_graph_entry(w, f"images.graphs.{target}", entry)


def check_decode(w: Where, decode, config: NeatConfig) -> None:
    """Incremental decoding: every decode graph a well-formed graph entry, every cache a named tensor with
    its maximum length, and the segment geometry the config's."""
    if decode is None:
        return
    w.typed(decode, dict, "decode")
    for key in ("segment_len", "context_len", "memory_chunks"):
        if w.typed(decode.get(key), int, f"decode.{key}") != getattr(config, key):
            w.fail(f"decode.{key}", f"is {decode[key]}, the config's is {getattr(config, key)}")
    names, caches = set(), {}
    for i, cache in enumerate(w.typed(decode.get("caches"), list, "decode.caches")):
        at = f"decode.caches[{i}]"
        names.add(check_tensor(w, at, cache, names))
        caches[cache["name"]] = (cache["dtype"], cache["shape"])
        if not 0 <= w.typed(cache.get("max_length"), int, f"{at}.max_length") < MAX_DIM:
            w.fail(f"{at}.max_length", "must be in 0..2^31")
    for target, graphs in w.typed(decode.get("graphs"), dict, "decode.graphs").items():
        for name, entry in w.typed(graphs, dict, f"decode.graphs.{target}").items():
            field = f"decode.graphs.{target}.{name}"
            tensors = check_graph_entry(w, field, entry)
            # every cache a decode graph takes or returns is one decode.caches lists, with its dtype and shape
            # (the entropy model's graphs carry the caches named entropy.*)
            prefix = "entropy." if name.startswith("entropy_") else ""
            for tensor, (io, dtype, shape) in tensors.items():
                stem = CACHE_IN if io == "inputs" else CACHE_OUT
                if not tensor.startswith(stem):
                    continue
                listed = caches.get(prefix + tensor[len(stem):])
                if listed is None:
                    w.fail(f"{field}.{io}", f"'{tensor}' is a cache decode.caches does not list")
                if listed != (dtype, shape):
                    w.fail(f"{field}.{io}", f"'{tensor}' is {dtype} {shape}, decode.caches says {listed[0]} {listed[1]}")


def check_experts(w: Where, manifest: dict) -> None:
    """Transformer² fields: the SVF layout tiles svf_z exactly; shipped experts and dispatch slots are named."""
    w.typed(manifest.get("svf_rank"), int, "svf_rank", optional=True)
    layout = w.typed(manifest.get("svf_layout"), list, "svf_layout", optional=True)
    if layout is not None:
        offset = 0
        for i, e in enumerate(layout):
            at = f"svf_layout[{i}]"
            w.typed(e, dict, at)
            w.typed(e.get("name"), str, f"{at}.name")
            if w.typed(e.get("offset"), int, f"{at}.offset") != offset:
                w.fail(f"{at}.offset", f"is {e['offset']}, expected {offset} (layers tile svf_z in order)")
            if not 1 <= w.typed(e.get("rank"), int, f"{at}.rank") < MAX_DIM:
                w.fail(f"{at}.rank", "must be at least 1")
            offset += e["rank"]
        rank = manifest.get("svf_rank")
        if rank is not None and offset != rank:
            w.fail("svf_layout", f"covers {offset} values, svf_rank is {rank}")
    w.typed(manifest.get("svf_base_id"), str, "svf_base_id", optional=True)
    for i, e in enumerate(w.typed(manifest.get("experts", []), list, "experts")):
        w.typed(e, dict, f"experts[{i}]")
        for key in ("name", "file"):
            w.typed(e.get(key), str, f"experts[{i}].{key}")
    dispatch = w.typed(manifest.get("dispatch", {}), dict, "dispatch", optional=True) or {}
    for i, name in enumerate(w.typed(dispatch.get("experts", []), list, "dispatch.experts")):
        w.typed(name, str, f"dispatch.experts[{i}]")


def manifest_paths(manifest: dict, manifest_path) -> list[tuple[str, str]]:
    """(field, relative path) for every path the manifest names outside its provenance sections: the
    PATH_KEYS values found anywhere in it and the keys of `files`."""
    found = [(f"files.{rel}", rel) for rel in manifest.get("files", {})]

    def walk(node, field):
        if isinstance(node, dict):
            for key, value in node.items():
                at = f"{field}.{key}" if field else str(key)
                if not field and key in PROVENANCE:
                    continue
                if key in PATH_KEYS and not isinstance(value, (dict, list)):
                    if not isinstance(value, str):
                        Where(manifest_path).fail(at, f"must be a relative path, got {type(value).__name__}")
                    found.append((at, value))
                elif key != "files" or field:
                    walk(value, at)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{field}[{i}]")

    walk(manifest, "")
    return found
