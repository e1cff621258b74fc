"""PyTorch backend: the reference, run through exactly the same Session code as every other backend."""

from __future__ import annotations

import numpy as np
import torch

from neat_edge.errors import NeatError
from neat_edge.model.graphs import StepModule
from neat_edge.model.neat import NeatModel
from neat_edge.runtimes.torch_arrays import as_tensor
from neat_edge.spec import GraphSpec, step_spec


class _TorchGraph:
    """Any flat-tensor module with a GraphSpec, behind the Backend protocol (numpy in, numpy out)."""

    name = "torch"
    spec: GraphSpec
    module: torch.nn.Module

    @torch.inference_mode()  # no autograd bookkeeping at all (a decode step is ~200 small ops)
    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        device = next(self.module.parameters()).device  # the module's own device (cpu or cuda)
        args = [as_tensor(feeds[n], device) for n in self.spec.input_names]
        return {n: t.cpu().numpy() for n, t in zip(self.spec.output_names, self.module(*args))}


def place(model: torch.nn.Module, device: str | None, backend) -> torch.nn.Module:
    """Move the model to `device` ("cpu" | "cuda"; None keeps it where it is) and name the backend."""
    if device is None:
        return model
    if device == "cuda" and not torch.cuda.is_available():
        raise NeatError("backend torch:cuda needs a CUDA GPU and a CUDA build of PyTorch "
                        f"(this PyTorch {torch.__version__} sees none)")
    backend.name = "torch" if device == "cpu" else f"torch:{device}"
    return model.to(device)


class TorchBackend(_TorchGraph):
    """The NEAT step graph (spec.step_spec); device "cuda" runs it on the GPU (torch:cuda)."""

    def __init__(self, model: NeatModel, device: str | None = None):
        self.model = place(model, device, self).eval()
        self.spec = step_spec(model)
        self.module = StepModule(model, self.spec).eval()


class TorchEntropyBackend(_TorchGraph):
    """The BLT entropy model (graph spec: spec.entropy_spec)."""

    def __init__(self, model, device: str | None = None):
        from neat_edge.model.graphs import EntropyStepModule
        from neat_edge.spec import entropy_spec

        self.spec = entropy_spec(model)
        self.module = EntropyStepModule(place(model, device, self).eval())


class TorchModuleGraph(_TorchGraph):
    """Any flat-tensor graph module of a model already placed on its device (the decode graphs)."""

    def __init__(self, module: torch.nn.Module, spec: GraphSpec, name: str = "torch"):
        self.module, self.spec, self.name = module.eval(), spec, name


def torch_decode_graphs(model: NeatModel, entropy_model=None, name: str = "torch", capture: bool | None = None,
                        compile: bool = False):
    """The decode graphs of an in-memory model (and its entropy model) as Backends, on the model's device.
    On CUDA (capture None or True) each is captured as a CUDA graph over one shared device pool
    (runtimes/captured.py); capture=True on the CPU runs the same pooled runner eagerly. compile: each
    graph through torch.compile first (fused kernels: fewer launches in the captured graph)."""
    from neat_edge.model.graphs import (
        DecodeGraph,
        DecodeSvfGraph,
        EntropyDecodeGraph,
        ImageHeadGraph,
        decode_specs,
        entropy_decode_specs,
        image_head_spec,
    )
    from neat_edge.runtimes.decoding import DecodeGraphs

    device = next(model.parameters()).device
    pooled = capture if capture is not None else device.type == "cuda"
    if pooled:
        from neat_edge.runtimes.captured import CapturedGraph, DevicePool

        pools = {"model": DevicePool(device), "entropy": DevicePool(device)}  # their cache names overlap

        if compile:  # every graph shares DecodeGraph.forward's code: one compilation per graph and batch size
            import torch._dynamo

            config = torch._dynamo.config
            limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
            setattr(config, limit, max(getattr(config, limit), 64))

        def backend(module, spec, owner="model"):
            if compile:  # static shapes: the captured graph replays the fused kernels
                module = torch.compile(module, dynamic=False)
            return CapturedGraph(module, spec, pools[owner], name, capture=True)
    else:
        def backend(module, spec, owner="model"):
            return TorchModuleGraph(module, spec, name)
    graphs = {n: backend((DecodeSvfGraph if n == "decode_svf" else DecodeGraph)(model, spec), spec)
              for n, spec in decode_specs(model).items()}
    entropy = None
    if entropy_model is not None:
        entropy = {n: backend(EntropyDecodeGraph(entropy_model, spec), spec, "entropy")
                   for n, spec in entropy_decode_specs(entropy_model).items()}
    head = TorchModuleGraph(ImageHeadGraph(model), image_head_spec(model), name)
    return DecodeGraphs(graphs, entropy, head)
