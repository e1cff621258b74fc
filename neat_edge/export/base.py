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
    from neat_edge.calibration.recording import record_step_feeds

    cfg = model.cfg
    seg = cfg.segment_len
    # patches: fixed patching fills segment/patch_size; entropy patching may start one at every byte.
    axes = {"batch": (1, 1, BATCH_MAX), "segment": (1, seg, seg),
            "patches": (1, max(1, seg // max(cfg.patch_size, 1)), seg)}
    return GraphSource("step", StepModule(model, spec).eval(), example_inputs(model, spec), spec, axes,
                       f"NEAT-Edge {cfg.name}: one {seg}-byte segment step (BLT patches, Titans memory, "
                       "Transformer² SVF, MVoT image head); every piece of state is an input and an output",
                       calibrate=lambda: record_step_feeds(model, patching))


def decode_example_inputs(model: NeatModel, batch: int = 2) -> dict[str, torch.Tensor]:
    """Inputs of every decode graph by name, from a real decode: a fresh stream, a few bytes in."""
    from neat_edge.model.decode import IncrementalDecoder
    from neat_edge.spec import CACHE_IN, STATE_IN

    dec, z = IncrementalDecoder(model), model.default_svf_z()
    state = model.initial_state(batch)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        _, _, cache = dec.start(state, z)
        for i in range(3):
            token = torch.randint(0, 256, (batch, 1), generator=gen)
            cache = dec.byte(token, torch.full((batch,), i), torch.zeros(batch, dtype=torch.long), cache, z)[2]
    from neat_edge.model.svf import svf_layers
    from neat_edge.spec import SVF_IN

    feeds = {"token": torch.randint(0, 256, (batch, 1), generator=gen), "svf_z": z,
             **{SVF_IN + n: layer.dense_weight(z).detach() for n, layer in svf_layers(model) if layer.is_svf},
             "position": torch.full((batch,), 3), "patch": torch.zeros(batch, dtype=torch.long),
             "patch_start": torch.zeros(batch, dtype=torch.long), "close": torch.ones(batch),
             "chunk": torch.zeros(batch, dtype=torch.long)}
    feeds.update({STATE_IN + k: v for k, v in state.items()})
    feeds.update({CACHE_IN + k: v for k, v in cache.items()})
    # no two inputs may share storage (decode_start copies the memory into the chunk caches): the exporter
    # would take aliased example inputs for one input and wire both names to it
    return {k: v.clone(memory_format=torch.contiguous_format) for k, v in feeds.items()}  # no aliasing, C order


DECODE_DESCRIPTIONS = {
    "decode_start": "starts a segment: the caches from the committed state, log p of its first byte",
    "decode_byte": "one byte that leaves its patch open: log p of the next byte",
    "decode_patch": "one byte that closes a patch: the patch through the latent layers, log p of the next byte",
    "decode_commit": "the byte that completes a segment: the Titans memory write, the committed state",
    "decode_chunk": "a completed chunk of patches written into the chunk-start memory",
    "decode_svf": "svf_z -> the SVF layers' weights the other decode graphs take (once per z)",
}


def decode_sources(model: NeatModel, patching=None, images: bool = False) -> list[GraphSource]:
    """The decode graphs (model/decode.py) as GraphSources: only the batch axis is dynamic (every cache
    has a fixed size), so every target builds them as it builds the step graph. patching = (entropy
    model, patcher): its decode graphs too; images: the image head (MVoT)."""
    from neat_edge.calibration.recording import decode_calibration
    from neat_edge.model.graphs import (
        DecodeGraph,
        DecodeSvfGraph,
        EntropyDecodeGraph,
        ImageHeadGraph,
        decode_specs,
        entropy_decode_specs,
        image_head_spec,
    )

    cfg, axes = model.cfg, {"batch": (1, 1, BATCH_MAX)}
    feeds = decode_example_inputs(model)
    record = decode_calibration(model, patching)
    sources = [GraphSource(name, (DecodeSvfGraph if name == "decode_svf" else DecodeGraph)(model, spec).eval(),
                           tuple(feeds[n] for n in spec.input_names), spec, {} if name == "decode_svf" else axes,
                           f"NEAT-Edge {cfg.name} incremental decoding: {DECODE_DESCRIPTIONS[name]}",
                           calibrate=lambda name=name: record()[name])
               for name, spec in decode_specs(model).items()]
    if images:
        hidden = torch.randn(2, cfg.d_local, generator=torch.Generator().manual_seed(0))
        sources.append(GraphSource("decode_image_head", ImageHeadGraph(model).eval(), (hidden,), image_head_spec(model),
                                   axes, "NEAT-Edge MVoT image head: image-code logits from a decode graph's hidden"))
    if patching is not None:
        entropy_model = patching[0]
        context = entropy_model.initial_state(2)["byte_context"]
        with torch.no_grad():
            cache = entropy_model.decode_start(context)[1]
        ent = {STATE_IN + "byte_context": context, "token": feeds["token"], "position": torch.zeros(2, dtype=torch.long),
               **{"cache." + k: v for k, v in cache.items()}}
        for name, spec in entropy_decode_specs(entropy_model).items():
            sources.append(GraphSource(name, EntropyDecodeGraph(entropy_model, spec).eval(),
                                       tuple(ent[n] for n in spec.input_names), spec, axes,
                                       "NEAT-Edge BLT entropy model, one byte at a time: where patches start"))
    return sources


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
