"""Time and memory per component of one step: entropy model, local encoder, latent + memory, decoder.

Each component is timed between forward hooks (CUDA synchronised, so the time is the component's own),
over many segments with the state carried, warm-up excluded. Memory is the component's peak of live
tensors above what existed when it started: the CUDA allocator's peak on a GPU; on a CPU, a dispatch
mode that follows every tensor the component creates until it is freed (weights and inputs excluded).
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from neat_edge.training.patches import WindowPatches


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensors created while active and still alive (CPU memory accounting)."""

    def __init__(self):
        super().__init__()
        self.refs: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.current = self.peak = 0

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.current -= self.sizes.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key not in self.refs:  # views share their base's storage: count it once
                    self.refs[key], self.sizes[key] = 0, storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                self.refs[key] += 1
                weakref.finalize(t, self._release, key)
        return out


@dataclass
class ComponentMeter:
    name: str
    device: torch.device
    seconds: list[float] = field(default_factory=list)
    peak_bytes: int = 0
    cpu_memory_pass: bool = False  # on a CPU, memory is followed in a separate pass (the mode costs time)
    _start: float = 0.0
    _base: int = 0
    _mode: LiveTensorBytes | None = None

    def begin(self, *_):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.cpu_memory_pass:
            self._mode = LiveTensorBytes()
            self._mode.__enter__()
        self._start = time.perf_counter()

    def end(self, *_):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(self.device) - self._base)
        elif self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.peak_bytes, self._mode = max(self.peak_bytes, self._mode.peak), None
            return  # a memory pass: its (slowed) time is not kept
        self.seconds.append(time.perf_counter() - self._start)


def _params(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters()) + sum(b.numel() for m in modules for b in m.buffers())


@torch.no_grad()
def profile_step(model, data: bytes, batch: int = 1, segments: int = 16, warmup: int = 2, patching=None,
                 device: str = "cpu") -> dict:
    """Profile `segments` chained segments of `data` (repeated to fill `batch` rows) after `warmup`."""
    dev = torch.device(device)
    model = model.to(dev).eval()
    seg = model.cfg.segment_len
    need = (segments + warmup) * seg
    raw = (data * (need // max(len(data), 1) + 1))[:need]
    windows = torch.from_numpy(np.frombuffer(raw, np.uint8).astype(np.int64)).to(dev).unsqueeze(0).expand(batch, -1)
    entropy_model = patching[0].to(dev).eval() if patching else None
    patches = WindowPatches(model.cfg, entropy_model, patching[1]) if patching else WindowPatches(model.cfg)
    plan = patches(windows)  # outside the meters: the entropy model is profiled on its own below

    parts = {"local encoder": [model.encoder], "latent + memory": [model.latent],
             "local decoder + heads": [model.decoder, model.byte_head, model.image_head, model.dispatch_head]}
    meters = {name: ComponentMeter(name, dev) for name in ["entropy model", *parts, "whole step"]}
    handles = []
    for name, modules in parts.items():
        for m in modules:
            handles += [m.register_forward_pre_hook(meters[name].begin), m.register_forward_hook(meters[name].end)]
    try:
        state = model.initial_state(batch)
        state = {k: v.to(dev) for k, v in state.items()}
        ent_state = {k: v.to(dev) for k, v in entropy_model.initial_state(batch).items()} if entropy_model else None
        z = model.default_svf_z()
        memory_pass = [] if dev.type == "cuda" else list(range(warmup, warmup + min(segments, 2)))
        for j, i in enumerate([*range(warmup + segments), *memory_pass]):
            if j == warmup:
                for meter in meters.values():
                    meter.seconds.clear()
                    meter.peak_bytes = 0
            if j == warmup + segments:
                for meter in meters.values():
                    meter.cpu_memory_pass = True
            x = windows[:, i * seg : (i + 1) * seg]
            if entropy_model is not None:
                meters["entropy model"].begin()
                _, ent_state = entropy_model.step(x, ent_state)
                meters["entropy model"].end()
            meters["whole step"].begin()
            _, state = model.step(x, *plan[i], z, state)
            meters["whole step"].end()
    finally:
        for h in handles:
            h.remove()
    step_ms = 1e3 * float(np.mean(meters["whole step"].seconds))
    params = {"entropy model": _params(entropy_model) if entropy_model else 0, "whole step": _params(model),
              **{name: _params(*mods) for name, mods in parts.items()}}
    rows = []
    for name, meter in meters.items():
        if not meter.seconds:
            rows.append({"name": name, "used": False, "ms_per_segment": None, "share_of_step": None,
                         "peak_memory_mb": None, "parameters": 0})
            continue
        ms = 1e3 * float(np.mean(meter.seconds))
        rows.append({"name": name, "used": True, "ms_per_segment": round(ms, 4),
                     "ms_p50": round(1e3 * float(np.median(meter.seconds)), 4),
                     "share_of_step": round(ms / step_ms, 4), "peak_memory_mb": round(meter.peak_bytes / 2**20, 3),
                     "parameters": params[name]})
    return {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "torch_threads": torch.get_num_threads(), "batch": batch, "segment_len": seg, "segments": segments,
            "warmup": warmup, "step_ms": round(step_ms, 4),
            "bytes_per_second": round(batch * seg / (step_ms / 1e3), 1), "components": rows}
