"""Reading bundles: a directory with the graphs, `neat.json` (the manifest), the initial state and the
PyTorch checkpoint the graphs came from. Opening one checks the format version and every checksum.
Runtimes read bundles through this module; export/bundle.py writes them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy

from neat_edge.config import NeatConfig
from neat_edge.errors import NeatError
from neat_edge.fileio import atomic_write_json, sha256_file
from neat_edge.spec import STATE_IN, GraphSpec

FORMAT, FORMAT_VERSION = "neat-bundle", 1
MANIFEST, INITIAL_STATE, CHECKPOINT_DIR = "neat.json", "initial_state.safetensors", "checkpoint"


@dataclass
class Bundle:
    path: Path
    manifest: dict

    @property
    def config(self) -> NeatConfig:
        return NeatConfig.from_dict(self.manifest["config"])

    def graph(self, target: str = "onnx") -> tuple[Path, GraphSpec]:
        try:
            entry = self.manifest["graphs"][target]
        except KeyError:
            raise NeatError(f"bundle {self.path} has no '{target}' graph "
                            f"(it has: {', '.join(self.manifest['graphs']) or 'none'})") from None
        return self.path / entry["file"], GraphSpec.from_dict(entry)

    def initial_state(self) -> dict[str, np.ndarray]:
        try:
            state = load_numpy(str(self.path / self.manifest["initial_state"]))
        except (SafetensorError, OSError) as exc:
            raise NeatError(f"corrupted initial state in bundle {self.path}: {exc}") from None
        return {k[len(STATE_IN):]: v for k, v in state.items()}

    @property
    def patching(self) -> dict:
        return self.manifest.get("patching") or {"kind": "fixed", "patch_size": self.config.patch_size}

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / self.manifest["checkpoint"]

    def save_manifest(self) -> None:
        atomic_write_json(self.path / MANIFEST, self.manifest)


def open_bundle(path: str | Path, verify_checksums: bool = True) -> Bundle:
    path = Path(path)
    if not path.exists():
        raise NeatError(f"bundle not found: {path}")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise NeatError(f"{path} is not a NEAT bundle (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NeatError(f"corrupted bundle manifest {manifest_path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise NeatError(f"{manifest_path} is not a NEAT bundle manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise NeatError(f"bundle {path} has format version {manifest.get('format_version')}, this neat-edge "
                        f"reads version {FORMAT_VERSION}: re-export it with this version")
    for rel, digest in manifest.get("files", {}).items():
        f = path / rel
        if not f.is_file():
            raise NeatError(f"bundle {path} is incomplete: {rel} is missing")
        if verify_checksums and sha256_file(f) != digest:
            raise NeatError(f"bundle {path} is corrupted: checksum of {rel} does not match the manifest")
    return Bundle(path, manifest)
