"""Core ML weight compression through coremltools.optimize.coreml: linear int8 weights
(`linear_quantize_weights`, symmetric, per output channel) or k-means palettization
(`palettize_weights`, 2^n-entry lookup table per tensor). Weights are stored compressed and
decompressed at load; compute precision is the program's (fp16, memory ops fp32), so this is about
size, as Apple's guide says. The Titans memory's own weights (projections, gates, M_0) are never
compressed: its test-time update is only as exact as the keys and values it writes (precision.py).

CompressedCoreMLTarget is a peer target: the Core ML target's fp16 program, then compressed.
"""

from __future__ import annotations

import re
from pathlib import Path

from neat_edge.errors import NeatError
from neat_edge.export.base import GraphSource, step_source
from neat_edge.spec import GraphSpec

COMPRESSIONS = ("int8", "palette4", "palette6", "palette8")
WEIGHT_THRESHOLD = 2048  # smaller tensors (norm scales, biases, gates) stay as they are
MEMORY_WEIGHT = re.compile(r"memory")  # MIL weight names keep the module path (..._memory_to_k_weight)


def compression_config(compression: str, memory_weights: list[str]):
    """The OptimizationConfig for a compression, skipping the memory's weights by op name."""
    import coremltools.optimize.coreml as cto

    if compression not in COMPRESSIONS:
        raise NeatError(f"unknown Core ML compression '{compression}' (choose from {', '.join(COMPRESSIONS)})")
    if compression == "int8":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                         weight_threshold=WEIGHT_THRESHOLD)
    else:
        op = cto.OpPalettizerConfig(mode="kmeans", nbits=int(compression[len("palette"):]),
                                    weight_threshold=WEIGHT_THRESHOLD)
    return cto.OptimizationConfig(global_config=op, op_name_configs={name: None for name in memory_weights})


def compress_mlmodel(mlmodel, compression: str):
    """(compressed MLModel, report): which weights were compressed and which memory weights kept."""
    import coremltools.optimize.coreml as cto

    weights = cto.get_weights_metadata(mlmodel, weight_threshold=WEIGHT_THRESHOLD)
    memory = sorted(name for name in weights if MEMORY_WEIGHT.search(name))
    config = compression_config(compression, memory)
    if compression == "int8":
        compressed = cto.linear_quantize_weights(mlmodel, config=config)
    else:
        import importlib.util

        if importlib.util.find_spec("sklearn") is None:  # coremltools' k-means comes from scikit-learn
            raise NeatError("Core ML palettization needs scikit-learn: pip install -e \".[coreml]\"")
        compressed = cto.palettize_weights(mlmodel, config=config)
    return compressed, {"compression": compression, "api": "coremltools.optimize.coreml",
                        "weights_compressed": len(weights) - len(memory), "memory_weights_kept": len(memory),
                        "weight_threshold": WEIGHT_THRESHOLD}


class CompressedCoreMLTarget:
    """--target coreml --precision int8 | palette4 | palette6 | palette8."""

    name = "coreml"

    def __init__(self, compression: str, stateful: bool = False):
        if compression not in COMPRESSIONS:
            raise NeatError(f"unknown Core ML compression '{compression}' (choose from {', '.join(COMPRESSIONS)})")
        self.precision, self.stateful = compression, stateful

    def build(self, model, spec: GraphSpec, out_dir: Path) -> dict:
        return self.build_graph(step_source(model, spec), out_dir)

    def build_graph(self, source: GraphSource, out_dir: Path) -> dict:
        from neat_edge.export.coreml import CoreMLTarget, _quiet_progress, import_coremltools, program_summary

        ct = import_coremltools()
        entry = CoreMLTarget("fp16", stateful=self.stateful).build_graph(source, out_dir)
        path = Path(out_dir) / entry["file"]
        with _quiet_progress():
            compressed, report = compress_mlmodel(ct.models.MLModel(str(path), skip_model_load=True), self.precision)
            compressed.save(str(path))
        return {**entry, **program_summary(compressed.get_spec()), "precision": self.precision,
                "compute_precision": "fp16", "weight_compression": report}
