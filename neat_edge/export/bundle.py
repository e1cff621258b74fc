"""Writing bundles: every target's graphs, `neat.json` (the manifest), the initial state and the PyTorch
checkpoint the graphs came from, staged and installed atomically (reading: neat_edge/bundle.py)."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import save

import neat_edge
from neat_edge.bundle import CHECKPOINT_DIR, FORMAT, FORMAT_VERSION, INITIAL_STATE, MANIFEST, check_install_target
from neat_edge.errors import NeatError
from neat_edge.fileio import atomic_write_bytes, default_mode, exchange_paths, remove_tree, rename_new, sha256_file
from neat_edge.model.checkpoint import save_checkpoint
from neat_edge.model.neat import NeatModel, count_parameters
from neat_edge.spec import STATE_IN, GraphSpec


def source_digest() -> str:
    """sha256 (16 hex) of the neat_edge package's Python sources: which code wrote a bundle, finer than the
    version number (a bundle exported before a change to the graphs can be told from a fresh one)."""
    h = hashlib.sha256()
    root = Path(neat_edge.__file__).parent
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def tool_versions() -> dict:
    versions = {"neat_edge": neat_edge.__version__, "neat_edge_source": source_digest(),
                "python": platform.python_version(), "torch": torch.__version__}
    for mod in ("onnx", "onnxruntime", "onnxscript", "coremltools", "onnxsim", "tensorrt"):
        try:  # installed distributions, without importing them (coremltools is slow and noisy to import)
            versions[mod] = metadata.version(mod)
        except metadata.PackageNotFoundError:
            versions[mod] = None
    return versions


def write_bundle_files(model: NeatModel, spec: GraphSpec, targets, out_dir: Path, on_target=None,
                       patching=None, decode: bool = True) -> dict:
    """Build every target into out_dir plus initial state and checkpoint; returns the manifest.
    patching = (entropy model, EntropyPatcher) for entropy patching: its graph is built too."""
    from neat_edge.export.base import entropy_source, step_source

    out_dir.mkdir(parents=True, exist_ok=True)
    graphs = {}
    for target in targets:
        entry = target.build_graph(step_source(model, spec, patching), out_dir)
        graphs[target.name] = {**entry, **spec.to_dict()}
        if on_target:
            on_target(target.name, out_dir / entry["file"])
    init = model.initial_state(1)
    atomic_write_bytes(out_dir / INITIAL_STATE, save({STATE_IN + k: v.contiguous() for k, v in init.items()}))
    save_checkpoint(model, out_dir / CHECKPOINT_DIR)
    patching_entry = {"kind": "fixed", "patch_size": model.cfg.patch_size}
    if model.cfg.patching == "entropy":
        if patching is None:
            raise NeatError("this model uses entropy patching: an entropy model and patcher are needed to export it")
        from dataclasses import asdict

        from neat_edge.model.entropy import save_patching

        entropy_model, patcher = patching
        entropy_graphs = {}
        for target in targets:  # the entropy graph, built by every target the same way as the step
            source = entropy_source(entropy_model)
            entry = target.build_graph(source, out_dir)
            entropy_graphs[target.name] = {**entry, **source.spec.to_dict()}
            if on_target:
                on_target(f"{target.name} (entropy)", out_dir / entry["file"])
        save_patching(out_dir / CHECKPOINT_DIR, entropy_model, patcher)
        patching_entry = {"kind": "entropy", **asdict(patcher), "entropy_context_len": entropy_model.cfg.context_len,
                          "graphs": entropy_graphs}
    images_entry = _write_image_decoder(model, targets, out_dir, on_target)
    decode_entry = (_write_decode_graphs(model, targets, out_dir, on_target, patching, images_entry is not None)
                    if decode else None)  # without decode graphs a session generates through the step graph
    from neat_edge.experts import write_bundle_experts

    library = write_bundle_experts(model, out_dir)
    files = sorted(p for p in out_dir.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {
        **library,
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "config": model.cfg.to_dict(), "fingerprint": model.cfg.fingerprint(),
        "parameters": count_parameters(model), "svf_rank": model.svf_rank,
        "graphs": graphs, "initial_state": INITIAL_STATE, "checkpoint": CHECKPOINT_DIR,
        "files": {str(p.relative_to(out_dir)): sha256_file(p) for p in files},
        "tools": tool_versions(), "parity": None, "patching": patching_entry, "images": images_entry,
        "decode": decode_entry,
    }


def _write_image_decoder(model: NeatModel, targets, out_dir: Path, on_target=None) -> dict | None:
    """MVoT: the image tokenizer's decoder as its own graph, built by every target like the step graph,
    and the tokenizer's weights beside the checkpoint (None when the model has no image tokenizer)."""
    from neat_edge.export.base import image_decoder_source
    from neat_edge.model.vq import image_size, save_tokenizer, tokenizer_for

    tok = tokenizer_for(model)
    if tok is None:
        return None
    graphs = {}
    for target in targets:
        source = image_decoder_source(tok)
        entry = target.build_graph(source, out_dir)
        graphs[target.name] = {**entry, **source.spec.to_dict()}
        if on_target:
            on_target(f"{target.name} (image decoder)", out_dir / entry["file"])
    save_tokenizer(tok, out_dir / CHECKPOINT_DIR)
    cfg = model.cfg
    return {"grid": cfg.image_grid, "codebook_size": cfg.image_codebook_size, "image_size": image_size(cfg),
            "graphs": graphs}


def _write_decode_graphs(model: NeatModel, targets, out_dir: Path, on_target=None, patching=None,
                         images: bool = False) -> dict:
    """The incremental-decoding graphs (model/decode.py), built by every target like the step graph, and
    the caches they carry (name, dtype, shape, maximum length: every cache has a fixed size)."""
    from neat_edge.export.base import decode_sources
    from neat_edge.model.decode import cache_layout

    graphs = {}
    for target in targets:
        entries = {}
        for source in decode_sources(model, patching, images):
            entry = target.build_graph(source, out_dir)
            entries[source.stem] = {**source.spec.to_dict(), **entry}  # a target may narrow the spec (unused inputs)
            if on_target:
                on_target(f"{target.name} ({source.stem})", out_dir / entry["file"])
        graphs[target.name] = entries
    caches = [{"name": name, "dtype": dtype, "shape": ["batch", *shape], "max_length": shape[-2] if len(shape) > 1
               else shape[0]} for name, (shape, dtype) in cache_layout(model).items()]
    if patching is not None:
        caches += [{"name": "entropy." + name, "dtype": dtype, "shape": ["batch", *shape], "max_length": shape[-2]}
                   for name, (shape, dtype) in patching[0].cache_layout().items()]
    return {"graphs": graphs, "caches": caches, "segment_len": model.cfg.segment_len,
            "context_len": model.cfg.context_len, "memory_chunks": model.cfg.memory_chunks}


def staging_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    staged.chmod(default_mode(directory=True))  # mkdtemp's 0700 would make the installed bundle private
    return staged


def install_bundle(staged: Path, out: Path) -> None:
    """Move a finished bundle into place (replacing an older bundle at that path). An existing bundle
    is swapped with the new one in one atomic rename where the OS can (a kill at any point leaves a
    whole bundle at `out`); the old one then sits in the staging folder until it is removed. A new path
    is taken only if nothing took it meanwhile (two exports racing: the loser gets a NeatError). On
    any failure the staging folder is removed: a refused install leaves nothing behind."""
    try:
        check_install_target(out)
        if out.exists():
            if exchange_paths(staged, out):
                return
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            staged.rename(out)
            shutil.rmtree(old, ignore_errors=True)
            return
        try:
            rename_new(staged, out)
        except OSError:
            if not os.path.lexists(out):
                raise
            raise NeatError(f"{out} appeared while this export ran (another export installed it first): "
                            "this bundle was not installed and nothing of it was kept") from None
    finally:
        remove_tree(staged)  # the old bundle after an exchange, or this one if refused


