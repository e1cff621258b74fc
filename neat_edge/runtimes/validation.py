"""What a Session accepts from its caller, checked at the door: every public method calls one of these
first, so a bad argument (a str prompt, a negative or NaN temperature, a huge max_new_bytes, a token out
of the vocabulary, a state of the wrong shape) is one NeatError naming it, never a TypeError or an
ONNX Runtime exception from deep inside a step. The step's outputs are checked too: a graph that
produced NaN (or a state that ran to infinity) stops the stream with an error instead of sampling from
or saving garbage.
"""

from __future__ import annotations

import functools
import math
import numbers
import os

import numpy as np

from neat_edge.config import IMAGE_BASE
from neat_edge.errors import NeatError
from neat_edge.spec import STATE_OUT

MAX_NEW_BYTES = 1 << 24  # one generate() call: 16 MiB of bytes, each a graph step (hours on a CPU)
MAX_IMAGES = 1 << 16
MAX_STREAMS = 4096  # one generate_batch call: streams decoded in lockstep
MAX_BATCH_BYTES = 1 << 24  # streams x new bytes of one generate_batch call (12 bytes of output each)
MAX_THREADS = 1024
BYTES_LIKE = (bytes, bytearray, memoryview)


def as_tokens(data) -> np.ndarray:
    """A stream piece as int64 tokens: bytes are bytes 0..255; an int array may also hold specials
    (BOS, BOI, ...) and MVoT image tokens (IMAGE_BASE + code)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(data), np.uint8).astype(np.int64)
    return np.asarray(data, np.int64).reshape(-1)


def _int(value, name: str, low: int = 0, high: int | None = None) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise NeatError(f"{name} must be an integer, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        raise NeatError(f"{name} must be {f'in {low}..{high}' if high is not None else f'>= {low}'}, got {value}")
    return int(value)


def check_bytes(data, what: str = "score") -> None:
    """`data` is bytes-like (bytes, bytearray, memoryview, a uint8 array): what the stream is made of."""
    if isinstance(data, BYTES_LIKE) or (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 1):
        return
    hint = ": encode it first (e.g. text.encode())" if isinstance(data, str) else ""
    raise NeatError(f"{what} takes bytes, got {type(data).__name__}{hint}")


def check_tokens(data, config, what: str = "the stream") -> None:
    """Bytes, or an integer token array whose values the model knows (bytes, specials, image codes)."""
    if isinstance(data, BYTES_LIKE):
        return
    if isinstance(data, str) or not isinstance(data, (np.ndarray, list, tuple)):
        check_bytes(data, what)
    a = np.asarray(data)
    if a.size == 0:
        return
    if a.dtype.kind not in "iu":
        raise NeatError(f"{what} takes bytes or an integer token array, got {a.dtype} values")
    top = IMAGE_BASE + config.image_codebook_size
    if a.min() < 0 or a.max() >= top:
        raise NeatError(f"{what} holds token {int(a.min() if a.min() < 0 else a.max())}: tokens are 0..{top - 1}")


def check_sampling(max_new_bytes, temperature, seed) -> None:
    _int(max_new_bytes, "max_new_bytes", 0, MAX_NEW_BYTES)
    if not isinstance(temperature, numbers.Real) or isinstance(temperature, bool) or \
            not math.isfinite(float(temperature)) or temperature < 0:
        raise NeatError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if seed is not None:
        _int(seed, "seed", 0, (1 << 63) - 1)


def check_generate(prompt, max_new_bytes, temperature, seed, allow_images, max_images, config) -> None:
    if not isinstance(allow_images, bool):
        raise NeatError(f"allow_images must be true or false, got {type(allow_images).__name__}")
    if allow_images:
        check_tokens(prompt, config, "generate")
    else:
        check_bytes(prompt, "generate")
    check_sampling(max_new_bytes, temperature, seed)
    _int(max_images, "max_images", 0, MAX_IMAGES)


def check_batch(prompts, max_new_bytes, temperature, seed) -> None:
    """generate_batch: a non-empty list of bytes prompts (at most MAX_STREAMS), and streams x
    max_new_bytes within MAX_BATCH_BYTES (its output arrays are allocated up front)."""
    if not isinstance(prompts, (list, tuple)):
        raise NeatError(f"generate_batch takes a list of bytes prompts, got {type(prompts).__name__}")
    if not 1 <= len(prompts) <= MAX_STREAMS:
        raise NeatError(f"generate_batch takes 1..{MAX_STREAMS} prompts, got {len(prompts)}")
    for p in prompts:
        check_bytes(p, "generate_batch")
    check_sampling(max_new_bytes, temperature, seed)
    if len(prompts) * max_new_bytes > MAX_BATCH_BYTES:
        raise NeatError(f"generate_batch: {len(prompts)} streams x {max_new_bytes:,} new bytes is over "
                        f"{MAX_BATCH_BYTES:,} in all: split it into smaller calls")


def check_open(bundle_dir, backend, graph, threads) -> None:
    """open_session's arguments: a path, a backend name, a graph name or None, a thread count or None."""
    check_path(bundle_dir, "the bundle")
    if not isinstance(backend, str):
        raise NeatError(f"backend must be a string such as 'onnxruntime', got {type(backend).__name__}")
    if graph is not None and not isinstance(graph, str):
        raise NeatError(f"graph must be a target name such as 'tensorrt' or None, got {type(graph).__name__}")
    if threads is not None:
        _int(threads, "threads", 1, MAX_THREADS)


def check_svf_z(svf_z, rank: int) -> np.ndarray:
    """A z vector given by the caller: `rank` finite numbers, as float32."""
    try:
        z = np.asarray(svf_z, np.float32)
    except (TypeError, ValueError):
        z = None
    if z is None or z.shape != (rank,) or not np.isfinite(z).all():
        raise NeatError(f"svf_z must be {rank} finite numbers, got {type(svf_z).__name__} "
                        f"{list(getattr(z, 'shape', ()))}")
    return z


def check_dispatch(prompt, strategy, options: dict) -> None:
    check_bytes(prompt, "dispatch")
    if not isinstance(strategy, str):
        raise NeatError(f"the dispatch strategy must be a string, got {type(strategy).__name__}")
    unknown = sorted(set(options) - {"max_bytes", "seed"})
    if unknown:
        raise NeatError(f"dispatch has no option '{unknown[0]}' (max_bytes, seed)")
    for key in options:
        _int(options[key], key)


def check_path(path, what: str) -> None:
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise NeatError(f"{what} must be a file path, got {type(path).__name__} {str(path)[:60]!r}")


def _check_arrays(given: dict, expected: dict, what: str) -> None:
    if not isinstance(given, dict) or set(given) != set(expected):
        raise NeatError(f"{what} must hold exactly the session's tensors ({', '.join(sorted(expected)) or 'none'})")
    for name, ref in expected.items():
        a = given[name]
        if not isinstance(a, np.ndarray) or a.shape != ref.shape or a.dtype != ref.dtype:
            raise NeatError(f"{what}: '{name}' must be a {ref.dtype} array of shape {list(ref.shape)}")


def check_segment(session, segment, state, patch_state, svf_z) -> None:
    """One step's inputs: a non-empty segment of at most segment_len tokens, and (when given) state,
    patcher state and z shaped like the session's own."""
    check_tokens(segment, session.config, "run_segment")
    n = len(segment) if isinstance(segment, BYTES_LIKE) else np.asarray(segment).size
    if not 1 <= n <= session.config.segment_len:
        raise NeatError(f"a segment holds 1..{session.config.segment_len} tokens, got {n}")
    if state is not None:
        _check_arrays(state, session.state, "state")
    if patch_state is not None:
        _check_arrays(patch_state, session.patch_state, "patch_state")
    z = session.svf_z if svf_z is None else svf_z
    rank = next(t.shape[0] for t in session.backend.spec.inputs if t.name == "svf_z")
    if not isinstance(z, np.ndarray) or z.shape != (rank,) or z.dtype != np.float32 or not np.isfinite(z).all():
        raise NeatError(f"svf_z must be {rank} finite float32 values")


def check_snapshot(session, snap) -> None:
    if not isinstance(snap, dict) or not {"state", "patch_state", "pending", "position", "patches"} <= set(snap):
        raise NeatError("restore takes a snapshot() of a session")
    _check_arrays(snap["state"], session.state, "snapshot state")
    _check_arrays(snap["patch_state"], session.patch_state, "snapshot patch_state")
    check_tokens(snap["pending"], session.config, "snapshot pending")
    _int(snap["position"], "snapshot position")
    if not isinstance(snap["patches"], tuple) or len(snap["patches"]) != 2:
        raise NeatError("snapshot patches must be (committed, pending)")
    for n in snap["patches"]:
        _int(n, "snapshot patches")


def check_outputs(out: dict) -> None:
    """After a step: no NaN anywhere, no +inf, and a finite next state (log-probs may hold -inf, p = 0)."""
    for name, a in out.items():
        if a.dtype.kind != "f":
            continue
        bad = not np.isfinite(a).all() if name.startswith(STATE_OUT) else (np.isnan(a).any() or np.isposinf(a).any())
        if bad:
            raise NeatError(f"the graph produced non-finite values in '{name}': the stream stops here "
                            "(its state, z or weights are out of range)")


# --- what a graph returns -------------------------------------------------------------------------
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


@functools.lru_cache(maxsize=1)
def _runtime_errors() -> tuple:
    """ONNX Runtime's own exception types (Fail, RuntimeException, InvalidArgument, ...): what
    InferenceSession.run raises when a graph cannot run (out of memory, a bad shape inside the graph);
    run_with_iobinding raises a plain RuntimeError ("Error in execution: ...") for the same failures."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        return (MemoryError, RuntimeError)
    found = [v for v in vars(ort_state).values() if isinstance(v, type) and issubclass(v, Exception)]
    return (MemoryError, RuntimeError, *found)


def guarded_run(where: str, run, *args):
    """run(*args) (an ONNX Runtime run); a failure of the runtime is one NeatError naming the graph and
    the cause (the first line of ORT's message) instead of an internal error."""
    try:
        return run(*args)
    except Exception as exc:
        if not isinstance(exc, _runtime_errors()):
            raise
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise NeatError(f"{where} failed to run in ONNX Runtime: {cause}") from None


class OutputCheck:
    """The spec's outputs, precomputed, to compare every run's outputs with: present, the spec's dtype,
    its rank and fixed sizes, and each named axis one size across the run (bound by the numpy inputs
    first). Cheap by construction (a few comparisons per output): decode steps take ~0.3 ms. Outputs
    kept as OrtValues (decode caches) are compared on the first run only, then fed to the next graph,
    whose declared input shapes ONNX Runtime checks on every run."""

    def __init__(self, spec, where: str):
        self.where = where
        self.outputs = [(t.name, np.dtype(t.dtype), tuple(t.shape),
                         tuple(t.shape) if all(isinstance(d, int) for d in t.shape) else None) for t in spec.outputs]
        self.axes_from = [(t.name, i, d) for t in spec.inputs for i, d in enumerate(t.shape) if isinstance(d, str)]
        self.native_seen = False

    def fail(self, why: str):
        raise NeatError(f"{self.where} returned {why}: the graph does not match its manifest")

    def __call__(self, out: dict, feeds: dict) -> dict:
        axes = None
        native = not self.native_seen
        for name, dtype, shape, fixed in self.outputs:
            a = out.get(name)
            if isinstance(a, np.ndarray):
                got_dtype, got_shape = a.dtype, a.shape
            elif a is None:
                self.fail(f"no '{name}'")
            elif not native:
                continue
            else:  # an OrtValue (step_native's kept outputs)
                got_dtype, got_shape = np.dtype(_ORT_DTYPES.get(a.data_type(), "V")), tuple(a.shape())
            if got_dtype != dtype:
                self.fail(f"'{name}' as {got_dtype}, the spec says {dtype}")
            if got_shape == fixed:
                continue
            if fixed is not None or len(got_shape) != len(shape):
                self.fail(f"'{name}' of shape {list(got_shape)}, the spec says {list(shape)}")
            if axes is None:
                axes = {}
                for fed, i, axis in self.axes_from:
                    f = feeds.get(fed)
                    if isinstance(f, np.ndarray) and f.ndim > i:
                        axes.setdefault(axis, f.shape[i])
            for got, want in zip(got_shape, shape):
                if (got != want) if isinstance(want, int) else (axes.setdefault(want, got) != got):
                    self.fail(f"'{name}' of shape {list(got_shape)}, the spec says {list(shape)} "
                              f"({want} = {axes.get(want, want)} in this run)")
        self.native_seen = True
        return out
