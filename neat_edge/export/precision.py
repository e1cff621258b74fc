"""Mixed precision, shared by every target: which ops belong to the Titans memory, which stays fp32.

The memory MLP's weights are *trained at test time* (Titans Eq 13-14): every segment adds a small
step θ·∇ℓ to weights of order 1 and carries them to the next segment. In fp16 (11-bit mantissa) such
steps are rounded away or accumulate error segment after segment, so every op that NeuralMemory
computes (projections, gates, retrieval, the closed-form chunk update of Eq 16-18) and the memory
state itself stay fp32, while attention, MLPs and heads run in fp16.

An op is a memory op when its source stack trace passes through neat_edge/model/titans.py. The
traces come from torch.export in strict mode (TorchDynamo), which records every frame; the
non-strict tracer keeps only `forward` frames, which would not name the memory's methods.
"""

from __future__ import annotations

import inspect
import logging
import warnings

import torch

from neat_edge.errors import NeatError
from neat_edge.model import titans
from neat_edge.spec import STATE_IN

PRECISIONS = ("fp32", "fp16", "int8")
MEMORY_FRAME = f'File "{inspect.getsourcefile(titans)}"'
ONNX_TRACE_KEY = "pkg.torch.onnx.stack_trace"  # where torch.onnx keeps each node's source trace


def in_memory_code(stack_trace: str | None) -> bool:
    return bool(stack_trace) and MEMORY_FRAME in stack_trace


def has_memory_state(spec) -> bool:
    """Does the graph compute with the Titans memory (so its memory ops must be found and kept fp32)?
    The step graph and decode_commit update it, decode_patch reads it; decode_start only copies the
    segment's starting memory into its caches."""
    if spec.name == "decode_start":
        return False
    return any(n.startswith(STATE_IN + "memory.") for n in spec.input_names)


def check_precision(precision: str, allowed=PRECISIONS[:2]) -> str:
    if precision not in allowed:
        raise NeatError(f"unknown precision '{precision}' for this target (choose from {', '.join(allowed)})")
    return precision


def quiet_exporter_logs() -> None:
    for name in ("torch.onnx", "torch._export", "torch.export", "onnxscript", "torch._dynamo", "coremltools"):
        logging.getLogger(name).setLevel(logging.ERROR)


def strict_program(source, fixed: dict[str, int] | None = None, decompose: bool = False):
    """torch.export in strict mode (full stack traces), with the source's dynamic axes except `fixed`
    (decompose: run the core ATen decompositions, as coremltools expects)."""
    quiet_exporter_logs()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.export.export(source.module.eval(), source.args,
                                          dynamic_shapes=source.torch_dynamic_shapes(fixed), strict=True)
            return program.run_decompositions({}) if decompose else program
        except Exception as exc:  # the exporter's messages are long; keep the first line
            raise NeatError(f"torch.export of graph '{source.spec.name}' failed: {str(exc).splitlines()[0]}") from exc


def onnx_memory_nodes(graph) -> list[str]:
    """Names of the ONNX nodes that come from the Titans memory code (needs stack-trace metadata)."""
    def trace(node):
        return next((p.value for p in node.metadata_props if p.key == ONNX_TRACE_KEY), "")

    return [n.name for n in graph.graph.node if in_memory_code(trace(n))]


def require_memory_ops(found: int, spec, where: str) -> None:
    """A graph with Titans memory state must have memory ops to keep in fp32: finding none means the
    stack traces are missing, and converting everything to fp16 silently would break the contract."""
    if found == 0 and has_memory_state(spec):
        raise NeatError(f"cannot locate the Titans memory ops in the {where} (no source stack traces), "
                        "so they cannot be kept in fp32; export with --precision fp32")
