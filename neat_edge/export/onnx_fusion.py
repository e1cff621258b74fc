"""Decode graphs for ONNX Runtime's CPU: the plain graphs (export/onnx.py) rewritten where a measurement
said a step spent its time (docs/decode_speed.md).

A decode step writes one row into each fixed-size cache. The plain graphs do it as model/layers.py's
write_slot does: Where(one-hot of the slot, row, cache), a graph that TensorRT, Core ML and the browser
run as it is. On ONNX Runtime's CPU that Where is an element-wise pass with broadcasting over the whole
cache, ~20 µs for a 20 k-float cache, and a decode_byte step writes eight caches: about half its time.
ScatterElements copies the cache (one memcpy) and writes the row: ~5 µs, and the values are the same
bits (a copy either way). This module finds every write_slot in a graph by its exported form,

    Where(Reshape?(Equal(arange(T), Unsqueeze(slot, [1])) [And Unsqueeze(enable, [1])]), rows, cache)

and replaces it with ScatterElements(cache, slot expanded to the row's shape, rows) on the cache's time
axis (with `enable`: the row a disabled stream writes is the one its cache already holds, GatherElements).
A Where whose rows are not exactly the cache's shape with one row on the axis is left as it is, so a
pattern that merely looks alike is never changed. Everything else in the graph stays; ONNX Runtime's own
optimiser fuses what it knows (SimplifiedLayerNormalization, FusedMatMul, Gelu) when it loads the graph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

FUSED_SUFFIX = ".cpu.onnx"  # decode_byte.onnx -> decode_byte.cpu.onnx
PASSES = ("scatter_cache_writes", "unit_transposes_as_reshapes", "rotary_embeddings")


class _Graph:
    """Producers, constants and static shapes of one ONNX graph, for pattern matching."""

    def __init__(self, model: onnx.ModelProto):
        self.model, self.graph = model, model.graph
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consts = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        for n in self.graph.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
        self.shapes = {}
        for v in (*inferred.value_info, *inferred.input, *inferred.output):
            dims = v.type.tensor_type.shape.dim
            self.shapes[v.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims)
        self._n = 0

    def op(self, name: str, op_type: str):
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def fresh(self, stem: str) -> str:
        self._n += 1
        return f"fusion/{stem}_{self._n}"

    def const(self, stem: str, value: np.ndarray) -> str:
        name = self.fresh(stem)
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        return name


def _slot_of(g: _Graph, equal) -> str | None:
    """Equal(arange(T), Unsqueeze(slot, [1])) (either order) -> the slot [B], else None."""
    for a, b in (equal.input, reversed(equal.input)):
        arange = g.consts.get(a)
        unsq = g.op(b, "Unsqueeze")
        if arange is None or unsq is None or arange.ndim != 1 or not np.array_equal(arange, np.arange(len(arange))):
            continue
        axes = g.consts.get(unsq.input[1]) if len(unsq.input) > 1 else None
        if axes is not None and axes.tolist() == [1]:
            return unsq.input[0]
    return None


def _match_write(g: _Graph, where) -> tuple[str, str | None, int] | None:
    """A write_slot Where -> (slot, enable or None, axis), else None."""
    cond, rows, cache = where.input
    reshape = g.op(cond, "Reshape")
    hit = reshape.input[0] if reshape is not None else cond
    enable, equal = None, g.op(hit, "Equal")
    both = g.op(hit, "And")
    if both is not None:
        for a, b in (both.input, reversed(both.input)):
            unsq = g.op(b, "Unsqueeze")
            axes = g.consts.get(unsq.input[1], np.zeros(0)) if unsq is not None else np.zeros(0)
            if g.op(a, "Equal") is not None and axes.tolist() == [1]:
                equal, enable = g.op(a, "Equal"), unsq.input[0]
                break
    if equal is None:
        return None
    slot = _slot_of(g, equal)
    cache_shape, row_shape = g.shapes.get(cache), g.shapes.get(rows)
    if slot is None or cache_shape is None or row_shape is None or len(cache_shape) != len(row_shape):
        return None
    if reshape is not None:
        target = g.consts.get(reshape.input[1])
        if target is None or len(target) != len(cache_shape):
            return None
        axes = [i for i in range(1, len(target)) if target[i] != 1]
    else:  # [B, T] written on axis 1
        axes = [1] if len(cache_shape) == 2 else []
    if len(axes) != 1:
        return None
    axis = axes[0]
    # rows must be the cache's shape with one row on the axis (no broadcasting: Scatter needs it exact)
    want = tuple(1 if i == axis else d for i, d in enumerate(cache_shape))
    if any(isinstance(d, int) and d > 0 and d != r for d, r in zip(want[1:], row_shape[1:])) or row_shape[axis] != 1 \
            or any(not isinstance(r, int) for r in row_shape[1:]):
        return None
    return slot, enable, axis


def scatter_cache_writes(model: onnx.ModelProto) -> int:
    """Every write_slot Where -> ScatterElements (in place in `model`); returns how many were rewritten."""
    g = _Graph(model)
    nodes, rewritten, shared = [], 0, {}
    for node in g.graph.node:
        match = _match_write(g, node) if node.op_type == "Where" else None
        if match is None:
            nodes.append(node)
            continue
        slot, enable, axis = match
        _, rows, cache = node.input
        rank = len(g.shapes[cache])
        shape = shared.get(("shape", rank))
        if shape is None:
            shape = shared[("shape", rank)] = g.const("row_shape", np.array([-1] + [1] * (rank - 1), np.int64))
        # one index per (slot, row shape): the k and v caches of a layer share it
        key = (slot, g.shapes[rows][1:])
        index = shared.get(key)
        if index is None:
            index = shared[key] = g.fresh("index")
            row_dims = g.fresh("row_dims")
            nodes += [helper.make_node("Reshape", [slot, shape], [index + "_b"]),
                      helper.make_node("Shape", [rows], [row_dims]),
                      helper.make_node("Expand", [index + "_b", row_dims], [index])]
        if enable is not None:  # a stream whose write is disabled writes back the row it already has
            flag = shared.get(("enable", enable, rank))
            if flag is None:
                flag = shared[("enable", enable, rank)] = g.fresh("enable")
                nodes.append(helper.make_node("Reshape", [enable, shape], [flag]))
            kept = g.fresh("kept")
            nodes += [helper.make_node("GatherElements", [cache, index], [kept], axis=axis),
                      helper.make_node("Where", [flag, rows, kept], [kept + "_rows"])]
            rows = kept + "_rows"
        nodes.append(helper.make_node("ScatterElements", [cache, index, rows], list(node.output), axis=axis,
                                      name=g.fresh((node.name or "write") + "/scatter")))
        rewritten += 1
    del g.graph.node[:]
    g.graph.node.extend(nodes)
    _drop_dead_nodes(model)
    return rewritten


def unit_transposes_as_reshapes(model: onnx.ModelProto) -> int:
    """A Transpose that moves only axes of size 1 (one patch, one position: [B,1,H,D] -> [B,H,1,D]) moves
    no data: it becomes a Reshape (a view in ONNX Runtime, no copy). Returns how many were rewritten."""
    g = _Graph(model)
    rewritten = 0
    for node in g.graph.node:
        if node.op_type != "Transpose" or not node.attribute:
            continue
        perm = list(node.attribute[0].ints)
        shape = g.shapes.get(node.input[0])
        if shape is None or len(shape) != len(perm) or perm[0] != 0 or \
                any(not isinstance(d, int) or d <= 0 for d in shape[1:]):
            continue
        moved = [a for a in perm if a == 0 or shape[a] != 1]  # the batch axis counts as not unit
        if moved != sorted(moved):
            continue
        target = g.const("unit_shape", np.array([0] + [shape[a] for a in perm[1:]], np.int64))
        node.op_type = "Reshape"
        del node.attribute[:]
        node.input.append(target)
        rewritten += 1
    return rewritten


def _rotary_parts(g: _Graph, add) -> tuple | None:
    """model/layers.py's rotary on one position, as exported,
        Add(Mul(x, Cos(C)), Mul(Concat(Neg(Slice(x, h:)), Slice(x, :h)), Sin(C))),  C = Concat(A, A),
        A = Unsqueeze*(Mul(Unsqueeze*(Cast(position)), freqs))
    -> (x, integer position [B], freqs), else None. x must be [B, heads, 1, head_dim] (a decode step)."""
    muls = [g.op(i, "Mul") for i in add.input]
    if None in muls:
        return None
    for m_cos, m_sin in (muls, reversed(muls)):
        for x, cos in (m_cos.input, reversed(m_cos.input)):
            cos_node = g.op(cos, "Cos")
            sin_node = next((g.op(i, "Sin") for i in m_sin.input if g.op(i, "Sin") is not None), None)
            rot = next((g.op(i, "Concat") for i in m_sin.input if g.op(i, "Concat") is not None), None)
            if cos_node is None or sin_node is None or rot is None or cos_node.input[0] != sin_node.input[0]:
                continue
            neg, low = g.op(rot.input[0], "Neg"), g.op(rot.input[1], "Slice")
            high = g.op(neg.input[0], "Slice") if neg is not None else None
            if high is None or low is None or high.input[0] != x or low.input[0] != x:
                continue
            angles = g.op(cos_node.input[0], "Concat")
            if angles is None or len(angles.input) != 2 or angles.input[0] != angles.input[1]:
                continue
            node = g.producer.get(angles.input[0])
            while node is not None and node.op_type == "Unsqueeze":
                node = g.producer.get(node.input[0])
            if node is None or node.op_type != "Mul":
                continue
            freqs = next((g.consts[i] for i in node.input if i in g.consts and g.consts[i].ndim == 1), None)
            pos = next((g.producer.get(i) for i in node.input if i not in g.consts), None)
            while pos is not None and pos.op_type == "Unsqueeze":
                pos = g.producer.get(pos.input[0])
            shape, at = g.shapes.get(x), pos.input[0] if pos is not None else None
            if freqs is None or pos is None or pos.op_type != "Cast" or shape is None or len(shape) != 4 \
                    or shape[2] != 1 or shape[3] != 2 * len(freqs) or len(g.shapes.get(at) or ()) != 1:
                continue
            return x, at, freqs
    return None


def rotary_embeddings(model: onnx.ModelProto) -> int:
    """Every one-position rotary (model/layers.py's rotary) -> one com.microsoft RotaryEmbedding (ONNX
    Runtime's CPU contrib op, non-interleaved: the same [x1 cos − x2 sin ‖ x2 cos + x1 sin]) over cos / sin
    tables of every position a decode graph can hold (its longest input axis), computed in fp32 the way
    the graph computes them (position × freqs, then cos / sin). Seven nodes a rotation become one."""
    import torch

    g = _Graph(model)
    longest = max((d for i in g.graph.input for d in g.shapes.get(i.name, ()) if isinstance(d, int)), default=0)
    tables, nodes, rewritten = {}, [], 0
    for node in g.graph.node:
        parts = _rotary_parts(g, node) if node.op_type == "Add" else None
        if parts is None:
            nodes.append(node)
            continue
        x, position, freqs = parts
        key = freqs.tobytes()
        if key not in tables:
            angles = torch.arange(longest + 1, dtype=torch.float32)[:, None] * torch.from_numpy(freqs.astype(np.float32))
            tables[key] = (g.const("rotary_cos", angles.cos().numpy()), g.const("rotary_sin", angles.sin().numpy()))
        ids = g.fresh("rotary_position")
        nodes += [helper.make_node("Unsqueeze", [position, g.const("axis_1", np.array([1], np.int64))], [ids]),
                  helper.make_node("RotaryEmbedding", [x, ids, *tables[key]], list(node.output), domain="com.microsoft",
                                   interleaved=0, name=g.fresh("rotary"))]
        rewritten += 1
    if rewritten:
        del g.graph.node[:]
        g.graph.node.extend(nodes)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        _drop_dead_nodes(model)
    return rewritten


def _drop_dead_nodes(model: onnx.ModelProto) -> None:
    """Nodes whose outputs nothing reads (the one-hot masks a rewrite left), and unread initializers."""
    graph = model.graph
    live = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(o in live for o in node.output):
            kept.append(node)
            live.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    unread = [i for i in graph.initializer if i.name not in live]
    for i in unread:
        graph.initializer.remove(i)


def in_place_outputs(model: onnx.ModelProto) -> list[str]:
    """The cache outputs a runtime may write into the very buffer it feeds as their input (past/present
    sharing, as ONNX Runtime GenAI does): next_cache.X made by a ScatterElements straight from input
    cache.X, where every other reader of cache.X runs before that scatter (is one of its ancestors).
    ScatterElements then writes one row in place: no copy of the cache, no rebinding."""
    from neat_edge.spec import CACHE_IN, CACHE_OUT

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    inputs = {i.name for i in graph.input}

    def ancestors(node) -> set[int]:
        seen, stack = set(), [node]
        while stack:
            for i in stack.pop().input:
                p = producer.get(i)
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    stack.append(p)
        return seen

    found = []
    for out in graph.output:
        node = producer.get(out.name)
        if node is None or node.op_type != "ScatterElements" or not out.name.startswith(CACHE_OUT):
            continue
        source = CACHE_IN + out.name[len(CACHE_OUT):]
        if node.input[0] != source or source not in inputs:
            continue
        before = ancestors(node)
        if all(r is node or id(r) in before for r in readers.get(source, [])):
            found.append(out.name)
    return sorted(found)


def fuse_decode_graph(model: onnx.ModelProto) -> dict:
    """All passes on one decode graph (in place): what each did, for the manifest."""
    before = len(model.graph.node)
    report = {"scatter_cache_writes": scatter_cache_writes(model),
              "unit_transposes_as_reshapes": unit_transposes_as_reshapes(model),
              "rotary_embeddings": rotary_embeddings(model)}
    return {"passes": report, "nodes_before": before, "nodes": len(model.graph.node),
            "in_place": in_place_outputs(model)}
