"""The model's graphs as modules over flat tensors in GraphSpec order (neat_edge/spec.py): what exporters
trace and what the PyTorch backend runs, so both see exactly the same function."""

from __future__ import annotations

import torch

from neat_edge.model.neat import NeatModel
from neat_edge.model.svf import svf_layers
from neat_edge.spec import (
    CACHE_IN,
    CACHE_OUT,
    DECODE_GRAPHS,
    STATE_IN,
    STATE_OUT,
    SVF_IN,
    GraphSpec,
    TensorSpec,
    cache_from_state,
    cache_group,
    cache_specs,
    decode_input,
)


class StepModule(torch.nn.Module):
    """NeatModel.step as a function of flat tensors in GraphSpec order: what exporters trace."""

    def __init__(self, model: NeatModel, spec: GraphSpec):
        super().__init__()
        self.model, self.spec = model, spec
        self.state_names = [n[len(STATE_IN):] for n in spec.input_names if n.startswith(STATE_IN)]

    def forward(self, data, patch_ids, patch_mask, svf_z, *state):
        outputs, new_state = self.model.step(data, patch_ids, patch_mask, svf_z,
                                             dict(zip(self.state_names, state)))
        return (outputs["byte_logprobs"], outputs["image_logits"], outputs["dispatch_logits"],
                *(new_state[n] for n in self.state_names))


class EntropyStepModule(torch.nn.Module):
    """The BLT entropy model's step over flat tensors (spec: spec.entropy_spec)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, data, byte_context):
        out, state = self.model.step(data, {"byte_context": byte_context})
        return out["byte_logprobs"], out["entropy"], state["byte_context"]


# --- incremental decoding ------------------------------------------------------------------------
# graph -> (state tensors it reads, cache groups it reads, cache groups it writes). Reads are what the
# graph may need for any memory variant (decode_start reads the memory for MAL's prefix only); an exporter
# drops inputs its graph does not use (onnx.py).
def _reads_state(graph: str, cfg):
    memory = lambda n: n.startswith("memory.") and (".weight." in n or ".momentum." in n)  # noqa: E731
    return {
        "decode_start": lambda n: n in ("byte_context", "latent_carry") or (n.startswith("memory.") and ".weight." in n),
        "decode_byte": lambda n: False,
        "decode_patch": lambda n: (n.startswith("memory.") and ".weight." in n) or n.startswith("window."),
        "decode_commit": lambda n: memory(n) or n.startswith("window."),
        "decode_chunk": lambda n: False,
    }[graph]


DECODE_CACHES = {
    "decode_start": ((), ("enc", "dec", "cross", "latent", "chunk")),
    "decode_byte": (("enc", "dec", "cross"), ("enc", "dec")),
    "decode_patch": (("enc", "dec", "cross", "latent", "chunk"), ("enc", "dec", "cross", "latent")),
    "decode_commit": (("enc", "latent", "chunk"), ()),
    "decode_chunk": (("latent", "chunk"), ("chunk",)),
}
DECODE_STEP_INPUTS = {
    "decode_start": (), "decode_byte": ("token", "position", "patch"),
    "decode_patch": ("token", "position", "patch", "patch_start", "close"),
    "decode_commit": ("token", "position", "patch", "patch_start"), "decode_chunk": ("chunk",),
}


def decode_specs(model: NeatModel) -> dict[str, GraphSpec]:
    """The GraphSpec of every decode graph of `model` (decode_chunk only with memory_chunks > 1)."""
    from neat_edge.model.decode import cache_layout
    from neat_edge.spec import step_spec

    cfg = model.cfg
    states = {t.name[len(STATE_IN):]: t for t in step_spec(model).inputs if t.name.startswith(STATE_IN)}
    caches = {t.name: t for t in cache_specs(cache_layout(model))}
    svf = [TensorSpec(SVF_IN + name, "float32", (layer.out_features, layer.in_features),
                      "dense weight U diag(σ ⊙ z) Vᵀ of this SVF layer for the current svf_z (decode_svf)")
           for name, layer in svf_layers(model) if layer.is_svf]
    head = (TensorSpec("byte_logprobs", "float32", ("batch", cfg.vocab_size), "log p(next byte | the stream), natural log"),
            TensorSpec("hidden", "float32", ("batch", cfg.d_local), "decoder output at the next position (image head)"))
    specs = {}
    for graph in DECODE_GRAPHS:
        if graph == "decode_chunk" and cfg.memory_chunks == 1:
            continue
        reads, writes = DECODE_CACHES[graph]
        # the chunk caches exist only with memory_chunks > 1; decode_chunk reads only the write inputs
        read = [n for n in caches if cache_group(n) in reads and (graph != "decode_chunk" or
                                                                  cache_group(n) == "chunk" or ".write_" in n)]
        inputs = [decode_input(n) for n in DECODE_STEP_INPUTS[graph]]
        if graph != "decode_chunk":
            inputs += svf  # the layers a graph does not use are dropped from its inputs at export
        inputs += [_renamed(states[n], STATE_IN + n) for n in states if _reads_state(graph, cfg)(n)]
        inputs += [_renamed(caches[n], CACHE_IN + n) for n in read]
        outputs = [] if graph in ("decode_commit", "decode_chunk") else list(head)
        if graph == "decode_commit":
            outputs += [_renamed(states[n], STATE_OUT + n) for n in states]
        # decode_start leaves out the caches a segment starts as copies of the state (cache_from_state)
        outputs += [_renamed(caches[n], CACHE_OUT + n) for n in caches if cache_group(n) in writes
                    and not (graph == "decode_start" and cache_from_state(n))]
        pairs = tuple((CACHE_IN + n, CACHE_OUT + n) for n in caches if cache_group(n) in writes and n in read)
        specs[graph] = GraphSpec(graph, tuple(inputs), tuple(outputs), pairs)
    specs["decode_svf"] = GraphSpec("decode_svf", (TensorSpec("svf_z", "float32", (model.svf_rank,),
                                                              "Transformer² z: singular-value scales of all SVF layers"),),
                                    tuple(svf))
    return specs


class DecodeSvfGraph(torch.nn.Module):
    """svf_z -> every SVF layer's dense weight U diag(σ ⊙ z) Vᵀ. The decode graphs take these weights as
    inputs: a decode step runs each layer on one row, where one GEMM with W beats the SVF form's two thin
    products, and all decode graphs then read one copy of the weights (what the session holds for the
    current z) instead of each holding its own: at one row per step, reading weights is what a step
    costs. It runs once per z (a dispatch, an expert)."""

    def __init__(self, model: NeatModel, spec: GraphSpec):
        super().__init__()
        self.model, self.spec = model, spec
        self.layers = dict(svf_layers(model))

    def forward(self, svf_z):
        return tuple(self.layers[n[len(SVF_IN):]].dense_weight(svf_z) for n in self.spec.output_names)


def _renamed(t: TensorSpec, name: str) -> TensorSpec:
    return TensorSpec(name, t.dtype, t.shape, t.doc)


class DecodeGraph(torch.nn.Module):
    """One decode graph (model/decode.py) as a function of flat tensors in its GraphSpec order."""

    def __init__(self, model: NeatModel, spec: GraphSpec):
        super().__init__()
        from neat_edge.model.decode import IncrementalDecoder

        self.model, self.spec, self.decoder = model, spec, IncrementalDecoder(model)

    def forward(self, *args):
        named = dict(zip(self.spec.input_names, args))
        state = {n[len(STATE_IN):]: v for n, v in named.items() if n.startswith(STATE_IN)}
        cache = {n[len(CACHE_IN):]: v for n, v in named.items() if n.startswith(CACHE_IN)}
        # z is the SVF layers' dense weights for the current svf_z, by layer name (SVFLinear.forward)
        z = {n[len(SVF_IN):]: v for n, v in named.items() if n.startswith(SVF_IN)}
        dec, graph = self.decoder, self.spec.name
        steps = [named.get(n) for n in ("token", "position", "patch")]
        if graph == "decode_start":
            logprobs, hidden, new = dec.start(state, z)
        elif graph == "decode_byte":
            logprobs, hidden, new = dec.byte(*steps, cache, z)
        elif graph == "decode_patch":
            logprobs, hidden, new = dec.patch(*steps, named["patch_start"], state, cache, z, named["close"] > 0.5)
        elif graph == "decode_commit":
            new_state = dec.commit(*steps, named["patch_start"], state, cache, z)
            return tuple(new_state[n[len(STATE_OUT):]] for n in self.spec.output_names)
        else:
            new = dec.chunk(named["chunk"], cache)
            return tuple(new[n[len(CACHE_OUT):]] for n in self.spec.output_names)
        rest = [new[n[len(CACHE_OUT):]] for n in self.spec.output_names[2:]]
        return (logprobs, hidden, *rest)


class ImageHeadGraph(torch.nn.Module):
    """MVoT: image-code logits from the decoder output `hidden` (the decode graphs leave the image head
    out: a generated byte inside text needs none)."""

    def __init__(self, model: NeatModel):
        super().__init__()
        self.head = model.image_head

    def forward(self, hidden):
        return (self.head(hidden),)  # a tuple like every graph module: backends zip it with the spec's outputs


def image_head_spec(model: NeatModel) -> GraphSpec:
    cfg = model.cfg
    return GraphSpec("decode_image_head",
                     (TensorSpec("hidden", "float32", ("batch", cfg.d_local), "decoder output (a decode graph's hidden)"),),
                     (TensorSpec("image_logits", "float32", ("batch", cfg.image_codebook_size), "VQ code logits"),))


def entropy_decode_specs(model) -> dict[str, GraphSpec]:
    """The BLT entropy model's decode graphs: a segment's start from the context, then one byte at a time."""
    cfg = model.cfg
    caches = [TensorSpec(n, d, ("batch", *s), "entropy model self-attention") for n, (s, d) in model.cache_layout().items()]
    context = TensorSpec(STATE_IN + "byte_context", "int64", ("batch", cfg.context_len), "last bytes the entropy model saw")
    entropy = TensorSpec("entropy", "float32", ("batch",), "entropy (nats) of the next byte's distribution")
    start = GraphSpec("entropy_decode_start", (context,), (entropy, *(_renamed(c, CACHE_OUT + c.name) for c in caches)))
    inputs = (decode_input("token"), decode_input("position"), *(_renamed(c, CACHE_IN + c.name) for c in caches))
    outputs = (entropy, *(_renamed(c, CACHE_OUT + c.name) for c in caches))
    pairs = tuple((CACHE_IN + c.name, CACHE_OUT + c.name) for c in caches)
    return {"entropy_decode_start": start, "entropy_decode_byte": GraphSpec("entropy_decode_byte", inputs, outputs, pairs)}


class EntropyDecodeGraph(torch.nn.Module):
    def __init__(self, model, spec: GraphSpec):
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, *args):
        named = dict(zip(self.spec.input_names, args))
        if self.spec.name == "entropy_decode_start":
            entropy, cache = self.model.decode_start(named[STATE_IN + "byte_context"])
        else:
            cache = {n[len(CACHE_IN):]: v for n, v in named.items() if n.startswith(CACHE_IN)}
            entropy, cache = self.model.decode_byte(named["token"], named["position"], cache)
        return (entropy, *(cache[n[len(CACHE_OUT):]] for n in self.spec.output_names[1:]))
