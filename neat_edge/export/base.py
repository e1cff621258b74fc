"""The small interface every export target implements (ONNX, Core ML and TensorRT are peers), and
GraphSource: one graph to build (the step graph, the entropy model's graph, any later one), which
every target turns into its artifact the same way."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from neat_edge.model.graphs import EntropyStepModule, StepModule
from neat_edge.model.neat import NeatModel
from neat_edge.spec import STATE_IN, GraphSpec


@dataclass
class GraphSource:
    """What a target needs to build one graph: a module over flat tensors in `spec` order, example
    inputs, and (min, opt, max) for every named dynamic axis of the spec. `stem` names the files
    (step.onnx, step.mlpackage, entropy.onnx, ...); `description` is the human-readable summary;
    `calibrate()` (where given) returns real input feeds, for int8 calibration."""

    stem: str
    module: torch.nn.Module
    args: tuple
    spec: GraphSpec
    axes: dict[str, tuple[int, int, int]]
    description: str = ""
    calibrate: Callable[[], list[dict]] | None = None

    def torch_dynamic_shapes(self, fixed: dict[str, int] | None = None):
        """torch.export dynamic_shapes for this source: one Dim per named axis (axes in `fixed`
        stay static), grouped like the module's forward signature (a *args parameter is a tuple)."""
        from torch.export import Dim

        fixed = fixed or {}
        dims = {name: Dim(name, min=lo, max=hi) for name, (lo, _, hi) in self.axes.items() if name not in fixed}
        per_input = [{axis: dims[name] for axis, name in t.dynamic_axes.items() if name in dims} or None
                     for t in self.spec.inputs]
        shapes, i = [], 0
        for param in inspect.signature(self.module.forward).parameters.values():
            if param.kind is param.VAR_POSITIONAL:
                shapes.append(tuple(per_input[i:]))
                i = len(per_input)
            else:
                shapes.append(per_input[i])
                i += 1
        return tuple(shapes)


class ExportTarget(Protocol):
    name: str
    precision: str

    def build(self, model: NeatModel, spec: GraphSpec, out_dir: Path) -> dict:
        """Write the artifact(s) for `spec` into out_dir; return the manifest's graph entry
        (at least {"file": relative path, "target": name, "precision": str})."""

    def build_graph(self, source: GraphSource, out_dir: Path) -> dict:
        """The same for any GraphSource (build() is build_graph(step_source(model, spec)))."""


def example_inputs(model: NeatModel, spec: GraphSpec, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Representative inputs for tracing (batch 2, so the batch axis is not specialised to 1)."""
    from neat_edge.patching import segment_patches

    cfg = model.cfg
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (batch, cfg.segment_len), generator=gen)
    ids, mask = segment_patches(cfg.segment_len, cfg.patch_size)
    state = model.initial_state(batch)
    names = [n[len(STATE_IN):] for n in spec.input_names if n.startswith(STATE_IN)]
    return (data, torch.from_numpy(ids).repeat(batch, 1), torch.from_numpy(mask).repeat(batch, 1),
            model.default_svf_z(), *(state[n] for n in names))


BATCH_MAX = 4096  # the largest batch an exported graph declares (ONNX); targets may profile less


def step_source(model: NeatModel, spec: GraphSpec, patching=None) -> GraphSource:
    """patching = (entropy model, EntropyPatcher) for a model with entropy patching (calibration runs
    the model on real bytes, so it needs its patches)."""
    from neat_edge.export.quantize import record_step_feeds

    cfg = model.cfg
    seg = cfg.segment_len
    # patches: fixed patching fills segment/patch_size; entropy patching may start one at every byte.
    axes = {"batch": (1, 1, BATCH_MAX), "segment": (1, seg, seg),
            "patches": (1, max(1, seg // max(cfg.patch_size, 1)), seg)}
    return GraphSource("step", StepModule(model, spec).eval(), example_inputs(model, spec), spec, axes,
                       f"NEAT-Edge {cfg.name}: one {seg}-byte segment step (BLT patches, Titans memory, "
                       "Transformer² SVF, MVoT image head); every piece of state is an input and an output",
                       calibrate=lambda: record_step_feeds(model, patching))


def entropy_source(model) -> GraphSource:
    from neat_edge.spec import entropy_spec

    seg = model.cfg.segment_len
    data = torch.randint(0, 256, (2, seg), generator=torch.Generator().manual_seed(0))
    return GraphSource("entropy", EntropyStepModule(model).eval(), (data, model.initial_state(2)["byte_context"]),
                       entropy_spec(model), {"batch": (1, 1, BATCH_MAX), "segment": (1, seg, seg)},
                       "NEAT-Edge BLT entropy model: next-byte entropies that decide where patches start")


def image_decoder_source(tok) -> GraphSource:
    """The bundle's MVoT image-decoder graph (every export target builds it the same way)."""
    from neat_edge.model.vq import ImageDecoderGraph, image_size
    from neat_edge.spec import image_decoder_spec

    g = tok.cfg.image_grid
    codes = torch.randint(0, tok.cfg.image_codebook_size, (2, g, g), generator=torch.Generator().manual_seed(0))
    return GraphSource("image_decoder", ImageDecoderGraph(tok).eval(), (codes,), image_decoder_spec(tok.cfg),
                       {"batch": (1, 1, BATCH_MAX)},
                       f"NEAT-Edge MVoT image decoder: {g}x{g} VQ codes -> {image_size(tok.cfg)}x"
                       f"{image_size(tok.cfg)} RGB pixels in [0, 1]")
