"""GraphSpec: *what* an exported graph takes and returns — separate from how each target builds it.

The spec is the contract between model, exporters and runtimes, and imports none of them: input/output
names, dtypes, shapes with named dynamic axes, and which input/output pairs carry state from one step to
the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the spec sits below model, export and runtimes: it imports none of them
    from neat_edge.model.neat import NeatModel

STATE_IN, STATE_OUT = "state.", "next_state."


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64"
    shape: tuple  # ints are fixed, strings name a dynamic axis
    doc: str = ""

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "dynamic_axes": {str(k): v for k, v in self.dynamic_axes.items()}, "doc": self.doc}

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(d["name"], d["dtype"], tuple(d["shape"]), d.get("doc", ""))


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    state: tuple[tuple[str, str], ...] = field(default=())  # (input name, output name) pairs

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict:
        return {"name": self.name, "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs],
                "state": [{"input": i, "output": o} for i, o in self.state]}

    @classmethod
    def from_dict(cls, d: dict) -> GraphSpec:
        return cls(d["name"], tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
                   tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
                   tuple((s["input"], s["output"]) for s in d["state"]))


STATE_DOCS = {"weight": "Titans memory MLP weights (Eq 13)", "momentum": "surprise momentum S (Eq 14)",
              "conv_in": "short-convolution history of the memory projections",
              "conv_out": "short-convolution history of the MAC output projections",
              "rows": "attention key rows of the last attn_window patches (sliding window across segments)",
              "valid": "1 where a carried window row holds a patch"}


def state_specs(model: NeatModel) -> list[TensorSpec]:
    specs = []
    for name, shape in model.state_shapes().items():
        if name == "byte_context":
            specs.append(TensorSpec(name, "int64", ("batch", *shape), "last bytes seen (BLT local context)"))
            continue
        doc = "latent output of the previous patch" if name == "latent_carry" else \
            STATE_DOCS[name.split(".")[2]]
        specs.append(TensorSpec(name, "float32", ("batch", *shape), doc))
    return specs


def step_spec(model: NeatModel) -> GraphSpec:
    """The one-segment step graph of a NeatModel."""
    cfg = model.cfg
    states = state_specs(model)
    inputs = [
        TensorSpec("bytes", "int64", ("batch", "segment"), "byte values 0..255 of this segment"),
        TensorSpec("patch_ids", "int64", ("batch", "segment"), "patch index of each byte (non-decreasing)"),
        TensorSpec("patch_mask", "float32", ("batch", "patches"), "1 for real patches, 0 for padding"),
        TensorSpec("svf_z", "float32", (model.svf_rank,), "Transformer² z: singular-value scales of all SVF layers"),
    ] + [TensorSpec(STATE_IN + s.name, s.dtype, s.shape, s.doc) for s in states]
    outputs = [
        TensorSpec("byte_logprobs", "float32", ("batch", "segment", cfg.vocab_size),
                   "log p(byte_i | bytes before i), natural log"),
        TensorSpec("image_logits", "float32", ("batch", "segment", cfg.image_codebook_size), "VQ code logits"),
        TensorSpec("dispatch_logits", "float32", ("batch", cfg.n_experts), "expert dispatch logits"),
    ] + [TensorSpec(STATE_OUT + s.name, s.dtype, s.shape, s.doc) for s in states]
    pairs = tuple((STATE_IN + s.name, STATE_OUT + s.name) for s in states)
    return GraphSpec("step", tuple(inputs), tuple(outputs), pairs)


def entropy_spec(model) -> GraphSpec:
    """The BLT entropy model's own step graph (runs before the main step to decide patches)."""
    w = model.cfg.context_len
    ctx = "last bytes seen by the entropy model"
    inputs = (TensorSpec("bytes", "int64", ("batch", "segment"), "byte values 0..255 of this segment"),
              TensorSpec(STATE_IN + "byte_context", "int64", ("batch", w), ctx))
    outputs = (TensorSpec("byte_logprobs", "float32", ("batch", "segment", 256), "log p(byte_i | bytes before i)"),
               TensorSpec("entropy", "float32", ("batch", "segment"), "entropy (nats) of the next-byte distribution"),
               TensorSpec(STATE_OUT + "byte_context", "int64", ("batch", w), ctx))
    return GraphSpec("entropy", inputs, outputs, ((STATE_IN + "byte_context", STATE_OUT + "byte_context"),))


def image_decoder_spec(cfg) -> GraphSpec:
    """MVoT: the VQ tokenizer's decoder as its own stateless graph (codes -> pixels)."""
    g, size = cfg.image_grid, cfg.image_size
    return GraphSpec("image_decoder",
                     (TensorSpec("image_codes", "int64", ("batch", g, g), "VQ codes of one image, row-major grid"),),
                     (TensorSpec("pixels", "float32", ("batch", size, size, 3), "RGB in [0, 1], channel-last"),))


# --- incremental decoding (model/decode.py): graphs with their caches as state ------------------------
CACHE_IN, CACHE_OUT = "cache.", "next_cache."
SVF_IN = "svf."  # a decode graph's SVF layer weights for the current z, from decode_svf (model/graphs.py)
DECODE_GRAPHS = ("decode_start", "decode_byte", "decode_patch", "decode_commit", "decode_chunk")
ENTROPY_DECODE_GRAPHS = ("entropy_decode_start", "entropy_decode_byte")
DECODE_INPUTS = {  # the per-step inputs a decode graph may take besides svf_z, state.* and cache.*
    "token": ("int64", ("batch", 1), "the byte (or MVoT token) just appended to the stream"),
    "position": ("int64", ("batch",), "its index in the segment"),
    "patch": ("int64", ("batch",), "index in the segment of its patch"),
    "patch_start": ("int64", ("batch",), "segment index of that patch's first byte"),
    "close": ("float32", ("batch",), "1 where the byte closes its patch (streams of a batch may differ), else 0"),
    "chunk": ("int64", ("batch",), "index of the memory chunk just completed"),
}
CACHE_DOCS = {
    "tokens": "encoder window: context bytes then the segment's bytes so far",
    "seg_hidden": "normed encoder hidden of the segment's bytes so far (patch pooling)",
    "enc": "local encoder self-attention", "dec": "local decoder self-attention",
    "cross": "decoder cross-attention over [carried latent ‖ the segment's closed patches]",
    "latent": "latent layer: attention over the segment's patches, convolution histories, write inputs",
    "chunk": "Titans memory at the current chunk's start (memory_chunks > 1)",
    "prefix": "latent layer: keys and values of the persistent-token prefix, fixed within a segment",
}


def cache_from_state(name: str) -> str | None:
    """The state tensor a decode cache starts each segment from, when it is one (the runtime copies it;
    no graph outputs an input unchanged): a latent layer's convolution histories continue the committed
    ones, and the chunk-start memory (memory_chunks > 1) starts as the segment-start memory."""
    parts = name.split(".")
    if parts[0] == "latent" and parts[2].startswith("conv_"):
        return f"memory.{parts[1]}.{parts[2]}"
    if parts[0] == "chunk":
        return "memory." + ".".join(parts[1:])
    return None


def cache_group(name: str) -> str:
    """enc (encoder window), dec (decoder self-attention), cross (latents the decoder reads), latent
    (per latent layer), prefix (persistent-token keys/values), chunk (chunk-start memory): which graphs
    read and write a cache."""
    if name in ("tokens", "seg_hidden") or name.startswith("enc."):
        return "enc"
    if name.startswith("dec."):
        return "cross" if ".cross_" in name else "dec"
    if ".prefix_" in name:  # written once at the segment's start, only read after
        return "prefix"
    return name.split(".")[0]


def cache_specs(layout: dict) -> list[TensorSpec]:
    """layout: name -> (shape after batch, dtype) (model/decode.py cache_layout)."""
    return [TensorSpec(name, dtype, ("batch", *shape), CACHE_DOCS[cache_group(name)])
            for name, (shape, dtype) in layout.items()]


def decode_input(name: str) -> TensorSpec:
    dtype, shape, doc = DECODE_INPUTS[name]
    return TensorSpec(name, dtype, shape, doc)
