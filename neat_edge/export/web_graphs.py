"""Decode graphs for the browser: each cache write also returned as its rows, so the page keeps the caches.

ONNX Runtime Web has no IO binding in its WebAssembly build: every output of a run is copied out of the
WebAssembly heap into a new JavaScript array, and every input copied in. A decode step's outputs are
mostly whole caches with one new row each (next_cache.X = ScatterElements(cache.X, index, rows), the CPU
rewrite of export/onnx_fusion.py): 0.5 MB out of the heap per decode_byte, measured at more than half of
its run in chromium. Here each such write's `index` and `rows` become graph outputs as well; the page
fetches those instead of next_cache.X and writes the rows into its own copy of cache.X
(neat_edge/web/decoding.js, ScatterElements' own rule), which is the same tensor, bit for bit.

The graph keeps every output it had (next_cache.X included, same names, same values): Python's runtimes read
the web folder's graphs as any bundle's and fetch only the outputs the manifest's spec names. What the
page fetches instead is the entry's `web.scatter` block: {next_cache.X: {axis, index, rows}}, `index` and
`rows` being the graph outputs (value names inside the graph) that hold them.
"""

from __future__ import annotations

import onnx
from onnx import helper

from neat_edge.spec import CACHE_IN, CACHE_OUT

WEB_SUFFIX = ".web.onnx"  # decode_byte.cpu.onnx -> decode_byte.web.onnx


def _attribute(node, name: str, default):
    """A node attribute's value, or `default` where the node leaves it unset."""
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def scatter_outputs(model: onnx.ModelProto) -> dict:
    """Adds, in place in `model`, the index and rows of every cache write next_cache.X =
    ScatterElements(cache.X, index, rows) (no reduction) as graph outputs; returns the `web.scatter` block.
    A write whose index or rows is not computed by a node (a graph input, an initializer) keeps only its
    whole-cache output: graph outputs that are graph inputs or constants are not what this needs."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    inputs = {i.name: i for i in graph.input}
    outputs = {o.name for o in graph.output}
    initializers = {t.name for t in graph.initializer}
    scatter, added, types = {}, {}, None
    for out in list(graph.output):
        node = producer.get(out.name)
        if node is None or node.op_type != "ScatterElements" or not out.name.startswith(CACHE_OUT):
            continue
        source = CACHE_IN + out.name[len(CACHE_OUT):]
        data, index, rows = node.input
        if data != source or source not in inputs or _attribute(node, "reduction", b"none") != b"none":
            continue
        if any(v in inputs or v in initializers or v not in producer for v in (index, rows)):
            continue
        elem = inputs[source].type.tensor_type.elem_type
        rank = len(inputs[source].type.tensor_type.shape.dim)
        if types is None:
            types = _value_types(model)
        for name, dtype in ((index, types.get(index, onnx.TensorProto.INT64)), (rows, elem)):
            if name not in outputs and name not in added:
                added[name] = helper.make_tensor_value_info(name, dtype, [None] * rank)
        axis = int(_attribute(node, "axis", 0))
        scatter[out.name] = {"axis": axis + rank if axis < 0 else axis, "index": index, "rows": rows}
    graph.output.extend(added.values())
    return scatter


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of each inner value ONNX's shape inference can type (ScatterElements takes int32 or int64
    indices; the export's are int64, the default where inference stops at a contrib op)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph.value_info
    return {v.name: v.type.tensor_type.elem_type for v in inferred if v.type.tensor_type.elem_type}
