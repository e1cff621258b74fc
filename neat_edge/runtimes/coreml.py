"""Core ML backend: a converted .mlpackage through coremltools' MLModel.predict (macOS only).

Feature names are the graph spec's names made identifiers (export/coreml.py coreml_name, recorded in
the manifest entry's "names"); integers cross as int32. A stateful model (`--stateful`) holds its
float state in an MLState from make_state(): the session still owns the state (it commits, saves
and loads it), so before a step the backend writes into the MLState only the state tensors that are
not the ones it returned from its own previous step — a stream that commits every step never copies
its state in; a partial segment (scored, not committed) or a loaded state is written back first.
Core ML keeps states in fp16, so what the session reads back is the fp16-stored value.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from neat_edge.errors import NeatError
from neat_edge.runtimes.validation import OutputCheck
from neat_edge.spec import GraphSpec


def import_coremltools():
    logging.getLogger("coremltools").setLevel(logging.ERROR)  # "Failed to load _MLModelProxy" off macOS
    try:
        import coremltools as ct
    except ImportError:
        raise NeatError("the Core ML target needs coremltools: pip install -e \".[coreml]\"") from None
    return ct



COMPUTE_UNITS = {"all": "ALL", "cpu": "CPU_ONLY", "gpu": "CPU_AND_GPU", "ane": "CPU_AND_NE"}


def load_mlmodel(path: Path, device: str = "all"):
    """MLModel for `path` on the given compute units; a clear error where Core ML cannot predict."""
    if device not in COMPUTE_UNITS:
        raise NeatError(f"unknown Core ML device '{device}' (choose from {', '.join(COMPUTE_UNITS)})")
    if sys.platform != "darwin":
        raise NeatError(f"Core ML runs models only on macOS (this is {sys.platform}): convert here, "
                        "run `neat parity BUNDLE --backends coreml` on a Mac")
    ct = import_coremltools()
    try:
        return ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[device]))
    except Exception as exc:  # Core ML's own load errors
        raise NeatError(f"Core ML cannot load {path}: {str(exc).splitlines()[0]}") from None


class CoreMLBackend:
    def __init__(self, graph_path: Path, spec: GraphSpec, entry: dict, device: str = "all", model=None):
        self.spec = spec
        self.names = entry.get("names") or {}
        self.held = list(entry.get("states") or [])
        self.model = load_mlmodel(graph_path, device) if model is None else model
        self.name = "coreml" if device == "all" else f"coreml:{device}"
        self.out_for = dict(spec.state)
        self._state = None  # the MLState, created on the first step of a stateful model
        self._returned: dict[str, np.ndarray] = {}  # state arrays handed out by the previous step
        self._check = OutputCheck(spec, f"graph {spec.name} ({graph_path})")  # every run's outputs vs the spec

    def _coreml(self, name: str) -> str:
        return self.names.get(name, name)

    def _sync_state(self, feeds: dict[str, np.ndarray]) -> None:
        if self._state is None:
            self._state = self.model.make_state()
            self._returned = {}
        for name in self.held:
            value = feeds[name]
            if value is not self._returned.get(self.out_for[name]):
                self._state.write_state(self._coreml(name), np.ascontiguousarray(value, dtype=np.float16))

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = {}
        for t in self.spec.inputs:
            if t.name in self.held:
                continue
            dtype = np.int32 if t.dtype.startswith("int") else np.float32
            inputs[self._coreml(t.name)] = np.ascontiguousarray(feeds[t.name], dtype=dtype)
        if self.held:
            self._sync_state(feeds)
            raw = self.model.predict(inputs, state=self._state)
        else:
            raw = self.model.predict(inputs)
        out = {}
        for t in self.spec.outputs:
            state_in = next((i for i, o in self.spec.state if o == t.name), None)
            value = self._state.read_state(self._coreml(state_in)) if state_in in self.held else raw[self._coreml(t.name)]
            out[t.name] = np.asarray(value).astype(t.dtype, copy=False)
        self._returned = {o: out[o] for i, o in self.spec.state if i in self.held}
        return self._check(out, feeds)
