"""Which bundle `neat-bench` runs for each precision.

BUNDLE_OR_CHECKPOINT is a bundle directory (neat.json), a checkpoint directory (config.json +
model.safetensors), a preset name or `default`. A bundle is used as it is for its own ONNX graph's
precision (and for the PyTorch backends, which run its checkpoint); every other precision
(fp32 / fp16 / int8 ONNX) is exported from the same weights into the cache
(`--cache`, default ~/.cache/neat-edge/bench/<weights id>/<precision>) and reused by later runs with
the same weights. A checkpoint or preset is exported the same way (a PyTorch-only run exports no graph,
only the bundle's checkpoint and initial state). Cached bundles are not parity-checked (the bench
measures their bits/byte itself); int8 bundles carry their calibration accuracy in neat.json.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from neat_edge.bundle import MANIFEST, open_bundle
from neat_edge.errors import NeatError

ONNX_PRECISIONS = ("fp32", "fp16", "int8")


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "neat-edge" / "bench"


def _weights_id(source: str) -> str:
    """A short id of the model's weights and config (cache key)."""
    path = Path(source)
    digest = hashlib.sha256()
    if (path / MANIFEST).is_file():
        manifest = open_bundle(path, verify_checksums=False).manifest
        digest.update(manifest["fingerprint"].encode())
        for name, sha in sorted(manifest["files"].items()):
            if name.startswith("checkpoint/"):
                digest.update(f"{name}:{sha}".encode())
        return digest.hexdigest()[:16]
    from neat_edge.fileio import sha256_file
    from neat_edge.model.checkpoint import DEFAULT_CHECKPOINT

    directory = DEFAULT_CHECKPOINT if source == "default" else path
    if (directory / "model.safetensors").is_file():
        for f in sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors")):
            digest.update(f"{f.relative_to(directory)}:{sha256_file(f)}".encode())
    else:  # a preset: its seeded init is a function of its name (and this version's code)
        import neat_edge

        digest.update(f"preset:{source}:{neat_edge.__version__}".encode())
    return digest.hexdigest()[:16]


def _current(bundle: Path, precision: str | None) -> bool:
    """A cached int8 bundle is reused only while it was calibrated with today's default settings (an
    upgrade that changes them, e.g. the activation type, must not be benchmarked on the old graph)."""
    if precision != "int8":
        return True
    from neat_edge.calibration import CalibrationPlan

    expected = CalibrationPlan().settings()
    cached = open_bundle(bundle, verify_checksums=False).manifest.get("calibration") or {}
    return all(cached.get(k) == v for k, v in expected.items())


class BundleResolver:
    """bundle_for(precision, needs_graph) -> the bundle directory to benchmark that precision on."""

    def __init__(self, source: str, cache: Path | None = None, log=print):
        self.source, self.log = source, log
        path = Path(source)
        self.given = path if (path / MANIFEST).is_file() else None
        if self.given is None and path.exists() and not (path / "model.safetensors").is_file():
            raise NeatError(f"{source} is neither a bundle (no {MANIFEST}) nor a checkpoint (no model.safetensors)")
        if self.given is None and not path.exists():
            from neat_edge.config import PRESETS

            if source not in (*PRESETS, "default"):
                raise NeatError(f"bundle or checkpoint not found: {source} (or a preset: {', '.join(PRESETS)}, default)")
        self.cache = Path(cache) if cache else default_cache()
        self._model = None

    def given_precision(self) -> str | None:
        if self.given is None:
            return None
        graph = open_bundle(self.given, verify_checksums=False).manifest["graphs"].get("onnx")
        return graph["precision"] if graph else None

    def bundle_for(self, precision: str, needs_graph: bool) -> Path:
        if precision not in ONNX_PRECISIONS:
            raise NeatError(f"unknown precision '{precision}' (choose from {', '.join(ONNX_PRECISIONS)})")
        if self.given is not None and (not needs_graph or self.given_precision() == precision):
            return self.given
        out = self.cache / _weights_id(self.source) / (precision if needs_graph else "torch")
        if (out / MANIFEST).is_file() and _current(out, precision if needs_graph else None):
            return out
        self._export(out, precision if needs_graph else None)
        return out

    def _export(self, out: Path, precision: str | None) -> None:
        from neat_edge.export.pipeline import export_bundle

        model, patching = self._load()
        self.log(f"exporting {self.source} ({precision or 'checkpoint only'}) into the bench cache: {out}")
        export_bundle(model, out, targets=("onnx",) if precision else (), verify=False, log=self.log,
                      patching=patching, precision=precision)

    def _load(self):
        if self._model is None:
            from neat_edge.model.checkpoint import load
            from neat_edge.tools.export_cli import patching_for

            source = str(self.given / "checkpoint") if self.given is not None else self.source
            model = load(source)
            self._model = (model, patching_for(source, model))
        return self._model
