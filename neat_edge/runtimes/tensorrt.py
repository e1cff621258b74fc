"""TensorRT backend: a serialized engine (TensorRT 10 name-based I/O API) behind the Backend protocol.

The engine is deserialised once; every step sets each input's shape (set_input_shape), binds every
tensor by name to a device buffer (set_tensor_address) and runs execute_async_v3 on a CUDA stream.
Device buffers are PyTorch CUDA tensors (the community's usual way to own CUDA memory from Python
next to TensorRT). State stays on the device between steps: the next_state.* outputs of one step
are written into buffers that become the state.* inputs of the next (the two sets are swapped, not
copied) whenever the session feeds back exactly the arrays this backend returned; anything else (a
fresh, loaded or uncommitted state) is uploaded. The session still receives host copies of the
state, which it owns (save_state / load_state).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neat_edge.errors import NeatError
from neat_edge.runtimes.validation import OutputCheck
from neat_edge.spec import GraphSpec


def engine_path(bundle_dir: Path, entry: dict) -> Path:
    """The engine a bundle's tensorrt entry names; built at export, or later by its trtexec recipe."""
    path = Path(bundle_dir) / entry.get("engine", "step.plan")
    if not path.is_file():
        recipe = Path(bundle_dir) / entry.get("trtexec", "step.trtexec.sh")
        raise NeatError(f"no TensorRT engine {path}: build it on a machine with TensorRT and an NVIDIA GPU "
                        f"(bash {recipe}, or neat-export --target tensorrt there)")
    return path


def _load_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise NeatError("backend tensorrt needs TensorRT (pip install tensorrt, Linux with an NVIDIA GPU)") from None
    import torch

    if not torch.cuda.is_available():
        raise NeatError("backend tensorrt needs an NVIDIA GPU and a CUDA build of PyTorch (none visible here)")
    return trt, torch


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, path: Path, spec: GraphSpec):
        trt, torch = _load_tensorrt()
        self.torch, self.spec = torch, spec
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise NeatError(f"TensorRT cannot deserialise {path} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        missing = set(spec.input_names) - set(self.inputs) | set(spec.output_names) - set(self.outputs)
        if missing:
            raise NeatError(f"engine {path} does not match the bundle's graph spec (missing: {', '.join(sorted(missing))})")
        self.dtypes = {n: torch.from_numpy(np.zeros(0, trt.nptype(self.engine.get_tensor_dtype(n)))).dtype
                       for n in names}
        self.pairs = dict(spec.state)  # state.x -> next_state.x
        self._device_state: dict[str, object] = {}  # state.x -> device tensor holding it
        self._returned: dict[str, np.ndarray] = {}  # next_state.x -> host array handed to the session
        self._check = OutputCheck(spec, f"engine {spec.name} ({path})")  # every run's outputs vs the spec

    def _input(self, name: str, value: np.ndarray):
        """The device tensor for input `name`: the device copy of last step's state output when the
        session feeds that very array back, else an upload."""
        out_name = self.pairs.get(name)
        if out_name is not None and value is self._returned.get(out_name) and name in self._device_state:
            return self._device_state[name]
        host = self.torch.from_numpy(np.ascontiguousarray(value))
        return host.to(device="cuda", dtype=self.dtypes[name], non_blocking=False)

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        with torch.cuda.stream(self.stream):
            bound = {}
            for name in self.inputs:
                tensor = self._input(name, feeds[name]).contiguous()
                if not self.context.set_input_shape(name, tuple(tensor.shape)):
                    raise NeatError(f"TensorRT: shape {tuple(tensor.shape)} of '{name}' is outside the engine's profile")
                bound[name] = tensor
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                bound[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
            for name, tensor in bound.items():
                self.context.set_tensor_address(name, tensor.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise NeatError("TensorRT: execute_async_v3 failed (see TensorRT's log)")
            host = {name: bound[name].cpu() for name in self.spec.output_names}
        self.stream.synchronize()
        out = {name: t.numpy().astype(t_spec.dtype, copy=False)
               for (name, t), t_spec in zip(host.items(), self.spec.outputs)}
        # Swap: this step's state outputs are the device inputs of the next step.
        self._device_state = {i: bound[o] for i, o in self.pairs.items()}
        self._returned = {o: out[o] for o in self.pairs.values()}
        return self._check(out, feeds)
