"""ONNX Runtime backend.

One `onnxruntime.InferenceSession` serves every backend opened on the same graph file with the same
provider and thread count (ONNX Runtime's Run() is thread-safe and the session holds no stream state:
that lives in each neat Session), so eight sessions on one bundle hold the graph's weights once. Before
a graph is loaded its external-data references are checked (they must stay inside the graph's folder
and, in a bundle, be covered by its checksums); once loaded, its inputs and outputs must be the ones
the manifest's spec describes.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort

from neat_edge.errors import NeatError
from neat_edge.runtimes.validation import OutputCheck, guarded_run
from neat_edge.spec import CACHE_IN, CACHE_OUT, GraphSpec

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "coreml": "CoreMLExecutionProvider"}
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}

_SHARED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # (file identity, provider, threads) -> session
_SHARED_LOCK = threading.Lock()


def external_data_files(graph_path: Path) -> list[Path]:
    """The files the graph's tensors keep their data in (ONNX external data), each refused unless it
    is a relative path that stays inside the graph's folder (symlinks followed)."""
    import onnx

    try:
        model = onnx.load(str(graph_path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
        raise NeatError(f"ONNX Runtime cannot load {graph_path}: not a valid ONNX file ({type(exc).__name__})") from None
    folder = graph_path.parent.resolve()
    found, graphs = [], [model.graph, *(f for f in model.functions)]
    while graphs:
        g = graphs.pop()
        tensors = list(getattr(g, "initializer", []))
        for node in getattr(g, "node", []):
            for attr in node.attribute:
                tensors += [attr.t] if attr.HasField("t") else []
                tensors += list(attr.tensors)
                graphs += ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
        for t in tensors:
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = next((e.value for e in t.external_data if e.key == "location"), "")
            target = (folder / location).resolve()
            if not location or os.path.isabs(location) or ".." in Path(location).parts or \
                    not (target == folder or folder in target.parents):
                raise NeatError(f"{graph_path}: tensor '{t.name}' keeps its data in {location!r}, outside the "
                                "graph's folder: refused")
            found.append(target)
    return found


def check_graph_io(session: ort.InferenceSession, spec: GraphSpec, graph_path: Path) -> None:
    """The loaded graph takes and returns what the spec (the manifest) says: names, dtypes, ranks, the
    fixed sizes, and dynamic axes where the spec has them."""
    def mismatch(why: str):
        raise NeatError(f"graph {graph_path} disagrees with the manifest: {why}")

    for kind, graph_io, spec_io in (("input", session.get_inputs(), spec.inputs),
                                    ("output", session.get_outputs(), spec.outputs)):
        have = {a.name: a for a in graph_io}
        if kind == "input" and set(have) != {t.name for t in spec_io}:
            extra = sorted(set(have) ^ {t.name for t in spec_io})
            mismatch(f"input '{extra[0]}' is in {'the graph only' if extra[0] in have else 'the manifest only'}")
        for t in spec_io:
            a = have.get(t.name)
            if a is None:
                mismatch(f"the graph has no output '{t.name}'")
            if ORT_DTYPES.get(a.type) != t.dtype:
                mismatch(f"{kind} '{t.name}' is {a.type} in the graph, {t.dtype} in the manifest")
            if not isinstance(a.shape, list):
                continue
            fixed_ok = all(g == s for g, s in zip(a.shape, t.shape) if isinstance(s, int) and isinstance(g, int))
            dynamic_ok = kind == "output" or all(not isinstance(g, int) for g, s in zip(a.shape, t.shape)
                                                 if isinstance(s, str))
            if len(a.shape) != len(t.shape) or not (fixed_ok and dynamic_ok):
                mismatch(f"{kind} '{t.name}' has shape {a.shape} in the graph, {list(t.shape)} in the manifest")


def shared_session(graph_path: Path, provider: str, threads: int | None,
                   check_file: Callable[[Path], object] | None = None) -> ort.InferenceSession:
    """The InferenceSession for this file, provider and thread count: an existing one while any
    backend still holds it, else a new one (external data checked first)."""
    st = graph_path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, provider, threads)
    with _SHARED_LOCK:
        session = _SHARED.get(key)
        if session is not None:
            return session
        for f in external_data_files(graph_path):
            if check_file is not None:
                check_file(f)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(graph_path), opts, providers=[provider])
        except Exception as exc:  # ORT raises its own types for unreadable or invalid models
            raise NeatError(f"ONNX Runtime cannot load {graph_path}: {str(exc).splitlines()[0][:300]}") from None
        _SHARED[key] = session
        return session


class OnnxRuntimeBackend:
    def __init__(self, graph_path: Path, spec: GraphSpec, device: str = "cpu", threads: int | None = None,
                 check_file: Callable[[Path], object] | None = None):
        """check_file(path): raises for an external-data file the caller (a bundle) does not cover."""
        if device not in PROVIDERS:
            raise NeatError(f"unknown ONNX Runtime device '{device}' (choose from {', '.join(PROVIDERS)})")
        provider = PROVIDERS[device]
        if provider not in ort.get_available_providers():
            raise NeatError(f"ONNX Runtime here has no {provider} (available: {', '.join(ort.get_available_providers())})")
        graph_path = Path(graph_path)
        if not graph_path.is_file():
            raise NeatError(f"ONNX Runtime cannot load {graph_path}: no such file")
        self.session = shared_session(graph_path, provider, threads, check_file)
        check_graph_io(self.session, spec, graph_path)
        self.name = "onnxruntime" if device == "cpu" else f"onnxruntime:{device}"
        self.spec, self.path = spec, graph_path
        self.device = "cuda" if device == "cuda" else "cpu"  # where step_native keeps what it returns
        self._io, self._bound = None, {}  # step_native's IO binding, and the value each input is bound to
        self._native = None  # step_native: the C-level binding and output device (made with the binding)
        self._check = OutputCheck(spec, f"graph {spec.name} ({graph_path})")  # every run's outputs vs the spec
        self.family = "entropy" if spec.name.startswith("entropy_") else "neat"  # whose caches (CachePool)
        self.in_place: frozenset = frozenset()  # cache outputs this graph may write into their input's buffer
        if self.device == "cuda":  # the CUDA provider keeps step_native (its caches stay on the GPU)
            self.step_pooled = None

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = guarded_run(self._check.where, self.session.run, self.spec.output_names, feeds)
        return self._check(dict(zip(self.spec.output_names, outputs)), feeds)

    def step_native(self, feeds: dict, keep) -> dict:
        """step() through IO binding: inputs may be OrtValues (a previous step's outputs, never copied),
        and the outputs named in `keep` come back as OrtValues on the backend's device (decode caches:
        passed to the next step as they are) instead of numpy copies. The rest come back as numpy."""
        if self._io is None:
            self._io, self._bound = self.session.io_binding(), {}
            # Outputs through the C-level binding with one device made once: the wrapper's bind_output builds
            # an OrtDevice per call and get_outputs wraps every output, ~0.1 ms of a 0.5 ms decode step.
            native, make = getattr(self._io, "_iobinding", None), getattr(getattr(ort, "OrtDevice", None), "make", None)
            self._native = (native, make(self.device, 0)._get_c_device()) if native and make else (self._io, self.device)
        io, bound = self._io, self._bound
        for name in self.spec.input_names:  # an input still bound to the same value is left as it is (the
            fed = feeds[name]  # SVF weights, the caches a step does not change): a decode step rebinds a few
            if bound.get(name, (None,))[0] is fed:
                continue
            if isinstance(fed, ort.OrtValue):
                io.bind_ortvalue_input(name, fed)
                bound[name] = (fed,)
            else:
                value = np.ascontiguousarray(fed)
                io.bind_cpu_input(name, value)
                bound[name] = (fed, value)  # both held: ORT reads `value`, `fed` keeps its id unique
        binding, device = self._native  # the C binding (or, where ORT has none, the public one)
        for name in self.spec.output_names:  # new outputs every run: no step writes into what it reads
            binding.bind_output(name, device)
        guarded_run(self._check.where, self.session.run_with_iobinding, io)
        values = binding.get_outputs()
        return self._check({name: (values[i] if isinstance(values[i], ort.OrtValue) else ort.OrtValue(values[i]))
                            if name in keep else values[i].numpy() for i, name in enumerate(self.spec.output_names)},
                           feeds)

    def step_pooled(self, feeds: dict, pool) -> dict:
        """step_native for one stream's decode loop on the CPU (runtimes/decoding.py's CachePool): the
        binding is the stream's own and made once; each cache output is written into the pool's spare
        buffer of that cache (ping-pong: never the buffer the step reads) and handed back as an OrtValue
        the next step reads in place; every other output goes into a numpy buffer bound once and comes back
        as a copy. A run rebinds only what changed (the caches the last step wrote, the token, the
        position), through the C-level binding: no per-run allocation, no per-output wrapping."""
        io, bound, outputs = pool.binding(self)
        c_io = io._iobinding
        for name in outputs.inputs:
            fed = feeds[name]
            if bound.get(name, (None,))[0] is fed:
                continue
            if isinstance(fed, ort.OrtValue):
                c_io.bind_ortvalue_input(name, fed._ortvalue)
                bound[name] = (fed,)
            else:
                value = np.ascontiguousarray(fed)
                c_io.bind_input(name, value)
                bound[name] = (fed, value)  # both held: ORT reads `value`'s memory at the run
        for name, cache_in, make in outputs.caches:
            spare = pool.spare(self.family, name, feeds.get(cache_in), make, name in self.in_place)
            if bound.get(name) is not spare:
                c_io.bind_ortvalue_output(name, spare._ortvalue)
                bound[name] = spare
        # a preallocated output of the wrong shape is refused by ONNX Runtime itself, inside the guard
        guarded_run(self._check.where, self.session.run_with_iobinding, io)
        result = {name: bound[name] for name, _, _ in outputs.caches}
        result.update({name: array.copy() for name, array in outputs.arrays})
        return result

    def pooled_binding(self, batch: int) -> tuple:
        """A new binding for one stream at `batch` (step_pooled): (IOBinding, what each name is bound to,
        PooledIO). Every output's shape is fixed once the batch is (decode graphs: only the batch
        axis is dynamic): the non-cache outputs are bound here, once, to numpy-backed OrtValues."""
        io, bound, caches, arrays = self.session.io_binding(), {}, [], []
        for t in self.spec.outputs:
            shape = tuple(batch if d == "batch" else d for d in t.shape)
            if t.name.startswith(CACHE_OUT):
                def make(shape=shape, dtype=np.dtype(t.dtype)):
                    return ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype))
                caches.append((t.name, CACHE_IN + t.name[len(CACHE_OUT):], make))
            else:
                array = np.empty(shape, np.dtype(t.dtype))
                bound[t.name] = ort.OrtValue.ortvalue_from_numpy(array)  # ORT writes into `array`
                io.bind_ortvalue_output(t.name, bound[t.name])
                arrays.append((t.name, array))  # held here: the OrtValue does not own the numpy memory
        return io, bound, PooledIO(tuple(caches), tuple(arrays), tuple(self.spec.input_names))


class PooledIO(NamedTuple):
    caches: tuple  # (output name, the cache input it replaces, make(): a new buffer for it)
    arrays: tuple  # (output name, the numpy array ORT writes it into)
    inputs: tuple  # the graph's input names (GraphSpec.input_names, made once)
