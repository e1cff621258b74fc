"""Reading bundles: a directory with the graphs, `neat.json` (the manifest), the initial state and the
PyTorch checkpoint the graphs came from. Runtimes read bundles through this module; export/bundle.py
writes them.

A bundle may come from elsewhere, so opening one is a check, not a read: the manifest's fields
(manifest.py), every path it names (relative, inside the bundle after resolving symlinks: `../`,
absolute paths and links that leave the folder are refused), and the sha256 of every file it lists.
Whatever a loader later opens goes through Bundle.file(), which refuses files the checksums do not
cover. Two documented exceptions: experts copied into experts/ after export (the session checks each
one's format, shapes and digest) and a TensorRT engine built on the GPU machine after export.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from neat_edge.bounded import read_head, read_json_file
from neat_edge.config import NeatConfig
from neat_edge.errors import NeatError
from neat_edge.fileio import atomic_write_json, sha256_file
from neat_edge.manifest import check_manifest, manifest_paths
from neat_edge.spec import STATE_IN, GraphSpec

FORMAT, FORMAT_VERSION = "neat-bundle", 1
MANIFEST, INITIAL_STATE, CHECKPOINT_DIR = "neat.json", "initial_state.safetensors", "checkpoint"
CHECKPOINT_CONFIG = "config.json"  # model/checkpoint.py's CONFIG_FILE (this module sits below the model)
MAX_MANIFEST_BYTES = 16 << 20  # a real manifest is tens of KB; a larger one is not read into memory
MAX_CONFIG_BYTES = 1 << 20
MAX_STATE_BYTES = 256 << 20  # an initial state read without a spec to size it


def is_inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_inside(root: str | Path, rel, field: str = "path") -> Path:
    """The real path of `rel` (a path relative to the bundle `root`, as the manifest names it), refused
    with a NeatError if it is absolute, climbs out with '..', or resolves (symlinks followed) outside."""
    if not isinstance(rel, str) or not rel or "\0" in rel or "\\" in rel:
        raise NeatError(f"bundle {root}: '{field}' is not a relative path ({str(rel)[:80]!r})")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or PureWindowsPath(rel).drive or ".." in pure.parts:
        raise NeatError(f"bundle {root}: '{field}' names {rel!r}, a path outside the bundle: refused")
    real_root = Path(root).resolve()
    target = (real_root / pure).resolve()
    if not is_inside(target, real_root):
        raise NeatError(f"bundle {root}: '{field}' ({rel}) is a link that leaves the bundle (to {target}): refused")
    return target


def canonical(rel: str) -> str:
    return PurePosixPath(rel).as_posix()


@dataclass
class Bundle:
    path: Path
    manifest: dict
    listed: frozenset = field(default=None, repr=False)  # canonical relative paths covered by `files`

    def __post_init__(self):
        if self.listed is None:
            self.listed = frozenset(canonical(k) for k in self.manifest.get("files", {}))

    @property
    def config(self) -> NeatConfig:
        return NeatConfig.from_dict(self.manifest["config"])

    def file(self, rel: str, field: str = "file", listed: bool = True) -> Path:
        """The real path of an artifact the manifest names, for a loader to open. listed=True (always,
        except for an engine built after export): the file, or every file under the folder, must be one
        the manifest's checksums cover (verified by open_bundle)."""
        target = resolve_inside(self.path, rel, field)
        if not target.exists():
            raise NeatError(f"bundle {self.path} is incomplete: {rel} ('{field}') is missing")
        if not listed:
            return target
        root = self.path.resolve()
        named = root / canonical(rel)  # as the manifest names it (links inside kept), for the listing
        for f in sorted(named.rglob("*")) if target.is_dir() else [named]:
            inner = f.relative_to(root).as_posix()
            if not is_inside(f.resolve(), root):
                raise NeatError(f"bundle {self.path}: {inner} is a link that leaves the bundle: refused")
            if not f.is_dir() and inner not in self.listed:
                raise NeatError(f"bundle {self.path}: {inner} is not listed in the manifest's checksums "
                                "(an unverified file): refused")
        return target

    def graph(self, target: str = "onnx") -> tuple[Path, GraphSpec]:
        try:
            entry = self.manifest["graphs"][target]
        except KeyError:
            raise NeatError(f"bundle {self.path} has no '{target}' graph "
                            f"(it has: {', '.join(self.manifest['graphs']) or 'none'})") from None
        return self.file(entry["file"], f"graphs.{target}.file"), GraphSpec.from_dict(entry)

    def initial_state(self, spec: GraphSpec | None = None) -> dict[str, np.ndarray]:
        """The state of a fresh stream, checked against `spec` (default: the manifest's step graph):
        exactly its state inputs, their dtypes and shapes (batch 1), finite values."""
        from neat_edge.tensorfile import read_tensors

        path = self.file(self.manifest["initial_state"], "initial_state")
        if spec is None and self.manifest["graphs"]:
            spec = GraphSpec.from_dict(next(iter(self.manifest["graphs"].values())))
        tensors, _ = read_tensors(path, f"initial state of bundle {self.path}", require_digest=False,
                                  max_bytes=state_bytes(spec) if spec is not None else MAX_STATE_BYTES)
        if spec is not None:
            check_state_tensors(tensors, spec, f"initial state of bundle {self.path}")
        return {k[len(STATE_IN):]: v for k, v in tensors.items()}

    @property
    def patching(self) -> dict:
        return self.manifest.get("patching") or {"kind": "fixed", "patch_size": self.config.patch_size}

    @property
    def checkpoint_dir(self) -> Path:
        return self.file(self.manifest["checkpoint"], "checkpoint")

    def save_manifest(self) -> None:
        atomic_write_json(self.path / MANIFEST, self.manifest)


def state_bytes(spec: GraphSpec, batch: int = 1) -> int:
    """The bytes of a state for `spec`: the most a state file of this graph holds, so a larger claim is
    refused before it is read (a state with a dynamic axis besides the batch: the readers' default cap)."""
    from neat_edge.tensorfile import MAX_FILE_BYTES

    total = 0
    for t in spec.inputs:
        if t.name.startswith(STATE_IN):
            n = np.dtype(t.dtype).itemsize
            for d in t.shape:
                if isinstance(d, str) and d != "batch":
                    return MAX_FILE_BYTES
                n *= batch if d == "batch" else d
            total += n
    return total


def check_state_tensors(tensors: dict[str, np.ndarray], spec: GraphSpec, what: str) -> None:
    """`tensors` (named like the graph's state inputs, `state.*`) are exactly what `spec` takes: the same
    names, dtypes and fixed dimensions, batch 1, and finite."""
    wanted = {t.name: t for t in spec.inputs if t.name.startswith(STATE_IN)}
    for name in sorted(set(tensors) ^ set(wanted)):
        raise NeatError(f"{what} does not match the graph: tensor '{name}' is "
                        f"{'missing' if name in wanted else 'not a state input of the graph'}")
    for name, t in wanted.items():
        a = tensors[name]
        dims_ok = len(a.shape) == len(t.shape) and all(
            got == (1 if want == "batch" else want) for got, want in zip(a.shape, t.shape) if not
            (isinstance(want, str) and want != "batch"))
        if a.dtype.name != t.dtype or not dims_ok:
            raise NeatError(f"{what} does not match the graph: '{name}' is {a.dtype.name} {list(a.shape)}, "
                            f"the graph takes {t.dtype} {list(t.shape)}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise NeatError(f"{what}: '{name}' holds NaN or infinite values")


def read_manifest(path: Path) -> dict:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise NeatError(f"{path} is not a NEAT bundle (no {MANIFEST})")
    try:  # strict: bounded size and depth, no key twice (a manifest saying two things), finite numbers
        manifest = read_json_file(manifest_path, "bundle manifest", MAX_MANIFEST_BYTES)
    except NeatError as exc:
        raise NeatError(f"corrupted {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise NeatError(f"{manifest_path} is not a NEAT bundle manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise NeatError(f"bundle {path} has format version {str(version)[:40]}, this neat-edge "
                        f"reads version {FORMAT_VERSION}: re-export it with this version")
    return manifest


def file_limits(manifest: dict) -> dict[str, int]:
    """The most bytes the listed files of a known size can hold (the initial state: the step graph's
    state plus its header; the checkpoint's config), checked before their sha256 is computed, so a
    multi-GB file there is refused at once. Graphs have no such bound: hashing them is the check."""
    limits = {canonical(f"{manifest['checkpoint']}/{CHECKPOINT_CONFIG}"): MAX_CONFIG_BYTES}
    if manifest["graphs"]:
        spec = GraphSpec.from_dict(next(iter(manifest["graphs"].values())))
        limits[canonical(manifest["initial_state"])] = state_bytes(spec) + (1 << 20)
    return limits


def check_install_target(out: Path) -> None:
    """`out` may receive a bundle: absent, or a NEAT bundle to replace (checked before an export starts,
    and again when export/bundle.py installs one)."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and (out / MANIFEST).is_file()):
        raise NeatError(f"refusing to overwrite {out}: it exists and is not a NEAT bundle")


def open_bundle(path: str | Path, verify_checksums: bool = True) -> Bundle:
    """Open and check a bundle: manifest fields, paths (inside the bundle), files (present, sha256)."""
    path = Path(path)
    if not path.exists():
        raise NeatError(f"bundle not found: {path}")
    manifest = read_manifest(path)
    config = check_manifest(manifest, path / MANIFEST)
    for where, rel in manifest_paths(manifest, path / MANIFEST):
        resolve_inside(path, rel, where)
    most = file_limits(manifest)
    for rel, digest in manifest.get("files", {}).items():
        f = resolve_inside(path, rel, f"files.{rel}")
        if not f.is_file():
            raise NeatError(f"bundle {path} is incomplete: {rel} is missing")
        if f.stat().st_size > most.get(canonical(rel), f.stat().st_size):
            raise NeatError(f"bundle {path} is corrupted: {rel} holds {f.stat().st_size:,} bytes, more than "
                            f"it can ({most[canonical(rel)]:,}): refused before hashing it")
        if verify_checksums and sha256_file(f) != digest:
            raise NeatError(f"bundle {path} is corrupted: {rel} differs from the manifest (sha256 mismatch)")
    config_rel = canonical(f"{manifest['checkpoint']}/{CHECKPOINT_CONFIG}")
    bundle = Bundle(path, manifest)
    if config_rel in bundle.listed:  # the checkpoint's config is covered by the checksums: they must agree
        try:
            own = NeatConfig.from_json(read_head(resolve_inside(path, config_rel), "config", MAX_CONFIG_BYTES,
                                                 whole=True))
        except (NeatError, TypeError) as exc:
            raise NeatError(f"bundle {path}: cannot read {config_rel}: {exc}") from None
        if own != config:
            raise NeatError(f"bundle {path}: the manifest's config differs from {config_rel}")
    return bundle
