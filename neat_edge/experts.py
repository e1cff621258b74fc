"""Transformer² expert library: named z-vector sets stored as safetensors files, one per expert.

An expert is z per SVF layer (Transformer² §3.1: W' = U diag(σ ⊙ z) Vᵀ), saved as
`experts/NAME.safetensors` next to a checkpoint or inside a bundle:

    tensors   one 1-D float32 tensor per SVF layer, named by the layer ("latent.layers.0.attn.q")
    metadata  format, domain, base_id (which base weights the z is for), training numbers

The session assembles the flat `svf_z` graph input from an expert with the bundle's SVF layout, so
adding an expert is copying a file into `experts/` — the graph is never re-exported. A mixture is
z = Σ_k α_k z_k (the session computes it; α from a dispatch strategy, runtimes/dispatch.py).

The dispatch head (the model's `dispatch_head`, a linear classifier over experts on the first pass)
is trained after the experts and kept as `dispatch_head.safetensors` beside the checkpoint's weights;
its metadata names the expert behind each output slot. It is part of the exported graph, so a
re-trained head needs a re-export; experts added later are reachable by the fixed and few-shot
strategies at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neat_edge.bounded import loads_json
from neat_edge.bundle import is_inside, resolve_inside
from neat_edge.errors import NeatError
from neat_edge.tensorfile import read_tensors, write_tensors

EXPERT_FORMAT, DISPATCH_FORMAT = "neat-expert/1", "neat-dispatch-head/1"
EXPERTS_DIR, DISPATCH_HEAD_FILE = "experts", "dispatch_head.safetensors"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_EXPERT_BYTES = 64 << 20  # an expert is one z per SVF layer: KBs (the bound when no layout sizes it)
MAX_EXPERT_FILES = 1024  # files of experts/ a library looks at: every session opens the folder


# --- identity of the base weights --------------------------------------------------------------
def base_model_id(model) -> str:
    """Which base weights a z-vector is for: a hash of every tensor that is neither an SVF layer nor
    the dispatch head (so it is the same for the dense and the SVF form, bit for bit)."""
    from neat_edge.model.svf import svf_layers

    skip = tuple(name + "." for name, _ in svf_layers(model)) + ("dispatch_head.",)
    digest = hashlib.sha256(model.cfg.to_json().encode())
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(skip):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def layout_of(model) -> list[dict]:
    """The model's SVF layout as manifest entries: [{"name", "offset", "rank"}] in svf_z order."""
    from neat_edge.model.svf import svf_layout

    return [{"name": n, "offset": o, "rank": r} for n, o, r in svf_layout(model)]


# --- one expert ----------------------------------------------------------------------------------
@dataclass
class Expert:
    name: str
    domain: str
    z: dict[str, np.ndarray]  # per SVF layer name
    metadata: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def flat(self, layout: list[dict]) -> np.ndarray:
        """This expert's z laid out as the graph input svf_z (layout: [{"name", "offset", "rank"}])."""
        total = sum(e["rank"] for e in layout)
        out = np.ones(total, np.float32)
        for e in layout:
            part = self.z.get(e["name"])
            if part is None or part.shape != (e["rank"],):
                got = "missing" if part is None else f"shape {tuple(part.shape)}"
                raise NeatError(f"expert '{self.name}' does not fit this model: layer {e['name']} is {got}, "
                                f"expected ({e['rank']},)")
            out[e["offset"] : e["offset"] + e["rank"]] = part
        return out

    def summary(self) -> dict:
        return {"name": self.name, "domain": self.domain, "file": self.path.name if self.path else None,
                "base_id": self.metadata.get("base_id"), "objective": self.metadata.get("objective")}


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise NeatError(f"bad expert name {name!r}: use letters, digits, '_', '-', '.' (it becomes a file name)")
    return name


def save_expert(path: str | Path, domain: str, z: dict[str, np.ndarray], metadata: dict | None = None) -> Path:
    """Write an expert file; its name is the file name without .safetensors."""
    path = Path(path)
    check_name(path.stem)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    meta.update({"format": EXPERT_FORMAT, "name": path.stem, "domain": domain})
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in z.items()}
    return write_tensors(path, tensors, meta, "expert file")


def load_expert(path: str | Path, max_bytes: int = MAX_EXPERT_BYTES) -> Expert:
    """An expert file, checked: its digest (files saved before digests existed have none), format,
    and z as finite 1-D float vectors. max_bytes: the most tensor bytes it may hold (read bounded)."""
    path = Path(path)
    tensors, meta = read_tensors(path, "expert file", require_digest=False, max_bytes=max_bytes)
    if meta.get("format") != EXPERT_FORMAT:
        raise NeatError(f"{path} is not a NEAT expert file (format {str(meta.get('format'))[:40]!r})")
    if any(t.ndim != 1 or t.dtype.kind != "f" or not np.isfinite(t).all() for t in tensors.values()):
        raise NeatError(f"expert file {path} is corrupted: z must be finite 1-D float vectors")
    z = {k: t.astype(np.float32) for k, t in tensors.items()}
    return Expert(check_name(path.stem), meta.get("domain", ""), z, meta, path)


# --- a folder of experts -------------------------------------------------------------------------
def expert_files(folder: Path, skipped: dict) -> list[Path]:
    """The *.safetensors entries of `folder`, sorted, at most MAX_EXPERT_FILES of them (the folder is
    listed without sorting or holding more names than that: a folder of a million files costs little)."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(".safetensors"):
                if len(found) == MAX_EXPERT_FILES:
                    skipped["(more files)"] = f"{folder} holds over {MAX_EXPERT_FILES} expert files: the rest are ignored"
                    break
                found.append(Path(entry.path))
    return sorted(found)


class ExpertLibrary:
    """The experts in a folder, checked against a model's SVF layout and base weights. The folder is
    read when the library is opened, so a file copied in is found by the next session."""

    def __init__(self, folder: Path | None, layout: list[dict], base_id: str | None,
                 dispatch_slots: list[str] | None = None, root: Path | None = None):
        """root: the bundle the folder belongs to; a file there that links outside it is not read."""
        self.folder, self.layout, self.base_id = folder, layout, base_id
        self.dispatch_slots = list(dispatch_slots or [])  # expert name behind each dispatch-head output
        self.experts: dict[str, Expert] = {}
        self.skipped: dict[str, str] = {}  # file -> why it is not usable
        # z in float64 at most: a file claiming more is refused before its payload is read
        max_bytes = 8 * self.svf_rank + 4096 if layout else MAX_EXPERT_BYTES
        if folder is not None and folder.is_dir():
            for f in expert_files(folder, self.skipped):
                if root is not None and not is_inside(f.resolve(), Path(root).resolve()):
                    self.skipped[f.name] = f"expert file {f} is a link that leaves the bundle: refused"
                    continue
                try:
                    expert = load_expert(f, max_bytes)
                    self.check(expert)
                except NeatError as exc:
                    self.skipped[f.name] = str(exc)
                    continue
                self.experts[expert.name] = expert

    def check(self, expert: Expert) -> None:
        if self.base_id and expert.metadata.get("base_id") not in (None, self.base_id):
            raise NeatError(f"expert '{expert.name}' was trained for other base weights (base id "
                            f"{expert.metadata.get('base_id')}, this model's is {self.base_id}): retrain it "
                            "with `neat train --expert`")
        expert.flat(self.layout)

    @property
    def names(self) -> list[str]:
        return list(self.experts)

    @property
    def svf_rank(self) -> int:
        return sum(e["rank"] for e in self.layout)

    def get(self, name: str) -> Expert:
        if name not in self.experts:
            why = self.skipped.get(f"{name}.safetensors")
            if why:
                raise NeatError(why)
            raise NeatError(f"no expert '{name}' (available: {', '.join(self.experts) or 'none'})")
        return self.experts[name]

    def mix(self, weights: dict[str, float]) -> np.ndarray:
        """z = Σ_k α_k z_k (Transformer² §3.2); no weights -> the base z (all ones)."""
        if not weights:
            return np.ones(self.svf_rank, np.float32)
        z = np.zeros(self.svf_rank, np.float64)
        for name, alpha in weights.items():
            z += float(alpha) * self.get(name).flat(self.layout).astype(np.float64)
        return z.astype(np.float32)

    def listing(self) -> list[dict]:
        return [{"name": e.name, "domain": e.domain} for e in self.experts.values()]


def library_for_model(model, folder: Path | None = None) -> ExpertLibrary:
    """The expert library of an in-memory model: `folder`, or the experts/ of its checkpoint."""
    if folder is None and getattr(model, "source_dir", None) is not None:
        folder = Path(model.source_dir) / EXPERTS_DIR
    return ExpertLibrary(folder, layout_of(model), base_model_id(model), getattr(model, "dispatch_slots", None))


def library_for_bundle(bundle) -> ExpertLibrary | None:
    """The bundle's experts/ folder (None for a bundle exported before expert support)."""
    m = bundle.manifest
    if "svf_layout" not in m:
        return None
    folder = resolve_inside(bundle.path, EXPERTS_DIR, "experts folder")
    return ExpertLibrary(folder, m["svf_layout"], m.get("svf_base_id"), (m.get("dispatch") or {}).get("experts"),
                         root=bundle.path)


# --- the dispatch head ---------------------------------------------------------------------------
def save_dispatch_head(path: str | Path, weight: np.ndarray, bias: np.ndarray, slots: list[str], base_id: str,
                       metadata: dict | None = None) -> Path:
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    meta.update({"format": DISPATCH_FORMAT, "experts": json.dumps(slots), "base_id": base_id})
    tensors = {"weight": np.ascontiguousarray(weight, np.float32), "bias": np.ascontiguousarray(bias, np.float32)}
    return write_tensors(path, tensors, meta, "dispatch head")


def apply_dispatch_head(model, checkpoint_dir: Path) -> None:
    """Load `dispatch_head.safetensors` (if the checkpoint has one) into model.dispatch_head and
    record which expert each output stands for (model.dispatch_slots)."""
    import torch

    path = Path(checkpoint_dir) / DISPATCH_HEAD_FILE
    model.dispatch_slots = []
    if not path.is_file():
        return
    head = model.dispatch_head
    tensors, meta = read_tensors(path, "dispatch head", require_digest=False,
                                 max_bytes=8 * (head.weight.numel() + head.bias.numel()))
    try:
        slots = loads_json(meta.get("experts", "[]"), "its expert list")
    except NeatError as exc:
        raise NeatError(f"corrupted dispatch head {path}: {exc}") from None
    if meta.get("format") != DISPATCH_FORMAT or set(tensors) != {"weight", "bias"} \
            or tensors["weight"].shape != tuple(head.weight.shape) or tensors["bias"].shape != tuple(head.bias.shape) \
            or not isinstance(slots, list) or not all(isinstance(x, str) for x in slots) or len(slots) > head.bias.shape[0]:
        raise NeatError(f"{path} is not a dispatch head for this model")
    if any(t.dtype.kind != "f" or not np.isfinite(t).all() for t in tensors.values()):
        raise NeatError(f"dispatch head {path} is corrupted: its weights must be finite floats")
    if meta.get("base_id") != base_model_id(model):
        warnings.warn(f"{path} was trained for other base weights: ignored (retrain it with "
                      "`neat train --dispatch-head`)", stacklevel=2)
        return
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(tensors["weight"].astype(np.float32)))
        head.bias.copy_(torch.from_numpy(tensors["bias"].astype(np.float32)))
    model.dispatch_slots = list(slots)


# --- into a bundle -------------------------------------------------------------------------------
def write_bundle_experts(model, out_dir: Path) -> dict:
    """Copy the usable experts of the model's checkpoint into out_dir/experts; returns the manifest
    entries: svf_layout, svf_base_id, experts (those shipped), dispatch (slot -> expert). Experts that
    do not fit the model (other base weights, other layout) are left out with a warning."""
    library = library_for_model(model)
    shipped = []
    if library.experts:
        (out_dir / EXPERTS_DIR).mkdir(parents=True, exist_ok=True)
    for expert in library.experts.values():
        shutil.copyfile(expert.path, out_dir / EXPERTS_DIR / expert.path.name)
        shipped.append({"name": expert.name, "domain": expert.domain, "file": f"{EXPERTS_DIR}/{expert.path.name}"})
    for fname, why in library.skipped.items():
        warnings.warn(f"expert {fname} not shipped: {why}", stacklevel=2)
    slots = list(library.dispatch_slots)
    missing = [s for s in slots if s not in library.experts]
    if missing:
        warnings.warn(f"the dispatch head routes to experts that are not shipped: {', '.join(missing)}",
                      stacklevel=2)
    return {"svf_layout": library.layout, "svf_base_id": library.base_id, "experts": shipped,
            "dispatch": {"experts": slots, "trained": bool(slots)},
            "svf_truncation_error": getattr(model, "svf_truncation_error", None) or {}}
