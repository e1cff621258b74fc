"""Which Backend runs a bundle graph: `KIND[:DEVICE]` names (onnxruntime:cuda, torch:cuda, coreml:ane,
tensorrt) mapped to the bundle's artifact for that kind and the backend class that runs it. The step
graph and every extra graph (the entropy model's) are opened the same way, on the same backend."""

from __future__ import annotations

from neat_edge.errors import NeatError
from neat_edge.spec import GraphSpec

DEVICES = {  # kind -> devices, the first is the default
    "onnxruntime": ("cpu", "cuda", "coreml"),
    "torch": ("cpu", "cuda"),
    "coreml": ("all", "cpu", "gpu", "ane"),
    "tensorrt": ("cuda",),
}
BACKENDS = tuple(DEVICES)
ARTIFACT = {"onnxruntime": "onnx", "coreml": "coreml", "tensorrt": "tensorrt"}  # kind -> manifest graph key


def parse_backend(backend: str) -> tuple[str, str]:
    kind, _, device = backend.partition(":")
    if kind not in DEVICES:
        raise NeatError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)}, "
                        f"with a device suffix such as onnxruntime:cuda or torch:cuda)")
    device = device or DEVICES[kind][0]
    if device not in DEVICES[kind]:
        raise NeatError(f"backend '{kind}' has no device '{device}' (choose from {', '.join(DEVICES[kind])})")
    return kind, device


def backend_label(kind: str, device: str) -> str:
    return kind if device == DEVICES[kind][0] else f"{kind}:{device}"


def graph_precision(bundle, kind: str) -> str:
    """The precision a backend kind runs this bundle in (torch: the fp32 checkpoint)."""
    if kind == "torch":
        return "fp32"
    entry = bundle.manifest["graphs"].get(ARTIFACT[kind]) or {}
    return entry.get("precision", "fp32")


def _open(kind: str, device: str, path, spec: GraphSpec, entry: dict, bundle=None, threads: int | None = None):
    if kind == "onnxruntime":
        from neat_edge.runtimes.onnxruntime import OnnxRuntimeBackend

        # External data a graph names must be bundle files the checksums cover, like the graph itself.
        check = None if bundle is None else (lambda f: bundle.file(f.relative_to(bundle.path.resolve()).as_posix()))
        return OnnxRuntimeBackend(path, spec, device, check_file=check, threads=threads)
    if kind == "coreml":
        from neat_edge.runtimes.coreml import CoreMLBackend

        return CoreMLBackend(path, spec, entry, device)
    from neat_edge.runtimes.tensorrt import TensorRTBackend, engine_path

    return TensorRTBackend(engine_path(path.parent, entry), spec)


def _artifact(kind: str, graph: str | None) -> str:
    """The manifest graph key a backend runs: its own kind's, or (ONNX Runtime only) another ONNX
    artifact of the bundle, e.g. graph="tensorrt" runs the TensorRT-ready ONNX."""
    if graph is None or graph == ARTIFACT.get(kind):
        return ARTIFACT[kind]
    if kind != "onnxruntime" or graph != "tensorrt":
        raise NeatError(f"backend '{kind}' cannot run the bundle's '{graph}' graph")
    return graph


def step_backend(bundle, kind: str, device: str, graph: str | None = None, threads: int | None = None):
    """The Backend for the bundle's step graph."""
    if kind == "torch":
        from neat_edge.model.checkpoint import load_checkpoint
        from neat_edge.runtimes.torch import TorchBackend

        return TorchBackend(load_checkpoint(bundle.checkpoint_dir), device=device)
    key = _artifact(kind, graph)
    path, spec = bundle.graph(key)
    return _open(kind, device, path, spec, bundle.manifest["graphs"][key], bundle, threads)


def entropy_backend(bundle, kind: str, device: str, graph: str | None = None, threads: int | None = None):
    """The Backend for the bundle's BLT entropy graph, on the same kind of backend as the step."""
    if kind == "torch":
        from neat_edge.model.entropy import load_entropy_model
        from neat_edge.runtimes.torch import TorchEntropyBackend

        return TorchEntropyBackend(load_entropy_model(bundle.checkpoint_dir), device=device)
    key = _artifact(kind, graph)
    graphs = bundle.patching.get("graphs", {})
    entry = graphs.get(key)
    if entry is None:
        raise NeatError(f"bundle {bundle.path} has no {key} entropy graph "
                        f"(it has: {', '.join(graphs) or 'none'}); re-export with --target {key}")
    return _open(kind, device, bundle.file(entry["file"], f"patching.graphs.{key}.file"), GraphSpec.from_dict(entry),
                 entry, bundle, threads)


def available_backends(bundle) -> tuple[list[str], dict[str, str]]:
    """(backends that can run this bundle here, {backend: why not}) — what `--backends all` means."""
    import importlib.util
    import sys

    import torch

    graphs = bundle.manifest["graphs"]
    reasons: dict[str, str | None] = {"torch:cuda": None if torch.cuda.is_available() else "no CUDA GPU visible to PyTorch"}
    ort_providers = ()
    if "onnx" in graphs:
        import onnxruntime as ort

        ort_providers = ort.get_available_providers()
    from neat_edge.runtimes.onnxruntime import PROVIDERS

    for device in DEVICES["onnxruntime"]:
        name = backend_label("onnxruntime", device)
        reasons[name] = ("the bundle has no onnx graph" if "onnx" not in graphs else
                         None if PROVIDERS[device] in ort_providers else f"ONNX Runtime here has no {PROVIDERS[device]}")
    reasons["coreml"] = ("the bundle has no coreml graph" if "coreml" not in graphs else
                         None if sys.platform == "darwin" else f"Core ML predicts only on macOS (this is {sys.platform})")
    trt = graphs.get("tensorrt")
    reasons["tensorrt"] = ("the bundle has no tensorrt graph" if trt is None else
                           "TensorRT is not installed" if importlib.util.find_spec("tensorrt") is None else
                           "no CUDA GPU" if not torch.cuda.is_available() else
                           None if (bundle.path / trt.get("engine", "step.plan")).is_file() else "no engine built yet")
    return [n for n, why in reasons.items() if why is None], {n: why for n, why in reasons.items() if why}


def decode_graphs(bundle, kind: str, device: str, graph: str | None = None, threads: int | None = None,
                  plain: bool = False):
    """The bundle's decode graphs (and its entropy model's, and the image head) as Backends of `kind`,
    or None when the bundle has none for that artifact (exported before incremental decoding). ONNX
    Runtime on the CPU runs each graph's CPU rewrite where the export made one (entry `cpu`,
    export/onnx_fusion.py), unless `plain`; every other runtime the plain graph."""
    from neat_edge.runtimes.decoding import DecodeGraphs

    key = _artifact(kind, graph)
    decode = (bundle.manifest.get("decode") or {}).get("graphs", {}).get(key)
    if not decode:
        return None
    rewritten = kind == "onnxruntime" and device == "cpu" and not plain

    def open_all(entries: dict) -> dict:
        def file(name, e):
            if rewritten and isinstance(e.get("cpu"), dict):
                return bundle.file(e["cpu"]["file"], f"decode.graphs.{key}.{name}.cpu.file")
            return bundle.file(e["file"], f"decode.graphs.{key}.{name}.file")

        backends = {name: _open(kind, device, file(name, e), GraphSpec.from_dict(e), e, bundle, threads)
                    for name, e in entries.items()}
        for name, e in entries.items():  # the cache outputs the CPU rewrite writes in place (onnx_fusion.py)
            if rewritten and isinstance(e.get("cpu"), dict):
                backends[name].in_place = frozenset(e["cpu"].get("in_place", ()))
        return backends

    entries = dict(decode)
    head = entries.pop("decode_image_head", None)
    entropy = {n: entries.pop(n) for n in list(entries) if n.startswith("entropy_")}
    return DecodeGraphs(open_all(entries), open_all(entropy) if entropy else None,
                        open_all({"decode_image_head": head})["decode_image_head"] if head else None)
