"""export_bundle: build every requested target, write the manifest, verify parity, install atomically."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time
from pathlib import Path

from neat_edge.bundle import Bundle, check_install_target
from neat_edge.calibration.coreml import COMPRESSIONS as COREML_COMPRESSIONS  # Core ML weight compression
from neat_edge.errors import NeatError
from neat_edge.export.bundle import install_bundle, staging_dir, write_bundle_files
from neat_edge.export.precision import PRECISIONS, quiet_exporter_logs
from neat_edge.export.verify import (
    BPB_TOLERANCE,
    DEFAULT_TOLERANCE,
    backend_passed,
    decode_parity_report,
    parity_report,
    read_corpus,
)
from neat_edge.fileio import remove_tree
from neat_edge.model.neat import NeatModel
from neat_edge.spec import step_spec

TARGET_NAMES = ("onnx", "coreml", "tensorrt")  # build order: the TensorRT target reuses the ONNX file
DEFAULT_PRECISION = {"onnx": "fp32", "coreml": "fp16", "tensorrt": "fp16"}
TARGET_PRECISIONS = {"onnx": PRECISIONS, "coreml": ("fp32", "fp16", *COREML_COMPRESSIONS), "tensorrt": PRECISIONS}
INT8_BPB_TOLERANCE = 0.05  # |Δ bits/byte| an int8 graph may lose against fp32 (issue 9's goal)
PARITY_SEGMENTS = 40


def make_target(name: str, precision: str | None = None, stateful: bool = False, calibration=None):
    """The export target `name` in `precision` (None: the target's default); calibration: the
    CalibrationPlan of an int8 ONNX graph (None: the defaults)."""
    if name not in TARGET_NAMES:
        raise NeatError(f"unknown export target '{name}' (choose from {', '.join(TARGET_NAMES)}, all)")
    precision = precision or DEFAULT_PRECISION[name]
    if precision not in TARGET_PRECISIONS[name]:
        raise NeatError(f"target '{name}' has no precision '{precision}' "
                        f"(choose from {', '.join(TARGET_PRECISIONS[name])})")
    if stateful and name != "coreml":
        raise NeatError("--stateful applies to the coreml target only")
    if name == "onnx" and precision == "int8":
        from neat_edge.calibration.targets import Int8OnnxTarget

        return Int8OnnxTarget(calibration)
    if name == "coreml" and precision in COREML_COMPRESSIONS:
        from neat_edge.calibration.coreml import CompressedCoreMLTarget

        return CompressedCoreMLTarget(precision, stateful=stateful)
    if name == "onnx":
        from neat_edge.export.onnx import OnnxTarget

        return OnnxTarget(precision)
    if name == "coreml":
        from neat_edge.export.coreml import CoreMLTarget

        return CoreMLTarget(precision, stateful=stateful)
    from neat_edge.export.tensorrt import TensorRTTarget

    return TensorRTTarget(precision)


def unbuildable_reason(name: str) -> str | None:
    """Why target `name` cannot be built on this machine at all (None: it can)."""
    if name == "coreml" and importlib.util.find_spec("coremltools") is None:
        return "coremltools is not installed (pip install -e \".[coreml]\")"
    return None


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(f.stat().st_size for f in files) / 1e6


def export_bundle(model: NeatModel, out: str | Path, targets=("onnx",), verify: bool = True,
                  corpus: str | Path | None = None, segments: int = PARITY_SEGMENTS,
                  tolerance: float = DEFAULT_TOLERANCE, log=print, patching=None,
                  precision: str | None = None, stateful: bool = False, calibration=None, decode: bool = True) -> dict:
    """calibration: a CalibrationPlan (files, method) for int8 graphs; None = the defaults. decode=False:
    no decode graphs (a bundle for scoring only; generation re-runs the step graph per byte)."""
    import contextlib

    from neat_edge.calibration.settings import CalibrationPlan, calibrating
    from neat_edge.runtimes import open_model_session

    if precision == "int8":  # every int8 graph of this export calibrates through the model's own session
        calibration = calibration or CalibrationPlan()
        calibration.corpus = calibration.corpus if calibration.corpus is not None else corpus
        calibration.session_factory = lambda: open_model_session(model, patching=patching)
    built = [make_target(t, precision, stateful and t == "coreml", calibration)  # --stateful: Core ML's
             for t in targets]
    quiet_exporter_logs()
    out = Path(out)
    check_install_target(out)  # refused before minutes of work, not after
    staged = staging_dir(out)
    try:
        spec = step_spec(model)
        start = [time.time()]

        def report_target(name, path):  # the same line for every target: file, size, time
            log(f"{name}: {path.name} ({_size_mb(path):.1f} MB) in {time.time() - start[0]:.1f}s")
            start[0] = time.time()

        with calibrating(calibration) if calibration else contextlib.nullcontext():
            manifest = write_bundle_files(model, spec, built, staged, report_target, patching, decode)
        if calibration and calibration.reports:  # the accuracy delta of every calibrated graph
            manifest["calibration"] = calibration.manifest_entry()
        bundle = Bundle(staged, manifest)
        bundle.save_manifest()
        if verify:
            manifest["parity"] = verify_bundle(staged, manifest, corpus, segments, tolerance)
        bundle.save_manifest()
    except BaseException:
        remove_tree(staged)
        raise
    if verify and not manifest["parity"]["passed"]:
        failed = out.with_name(out.name + ".failed")
        try:
            shutil.rmtree(failed, ignore_errors=True)
            staged.rename(failed)
        except BaseException:
            remove_tree(staged)
            raise
        decode = manifest["parity"].get("decode") or {"backends": {}}
        results = [(name, r) for name, r in manifest["parity"]["backends"].items()]
        results += [(f"{name} decode graphs", r) for name, r in decode["backends"].items()]
        bad = [f"{name} ({r['precision']}: max |Δ log-prob| {r['max_abs_logprob_diff']:.3g}, "
               f"Δ bits/byte {r['bits_per_byte_delta']:+.3g})" for name, r in results if not r["passed"]]
        if decode.get("reference", {}).get("passed") is False:
            bad.append(f"torch decode graphs (max |Δ log-prob| {decode['reference']['max_abs_logprob_diff']:.3g} "
                       "vs its own segment step)")
        raise NeatError(f"parity check failed for {', '.join(bad)} (tolerances: {tolerance:g} for fp32, "
                        f"{BPB_TOLERANCE:g} bits/byte for fp16, {INT8_BPB_TOLERANCE:g} for int8); "
                        f"bundle kept at {failed} for inspection")
    install_bundle(staged, out)
    return manifest


def verification_sessions(path: Path, manifest: dict) -> tuple[dict, dict, dict]:
    """(sessions, precisions, skipped) for every artifact of the bundle that this machine can run."""
    from neat_edge.runtimes import open_session

    graphs = manifest["graphs"]
    sessions, precisions, skipped = {}, {}, {}
    if "onnx" in graphs:
        sessions["onnxruntime"] = open_session(path, backend="onnxruntime")
        precisions["onnxruntime"] = graphs["onnx"]["precision"]
    if "tensorrt" in graphs:
        name = "onnxruntime (tensorrt onnx)"  # the TensorRT-ready ONNX itself, through ONNX Runtime
        sessions[name] = open_session(path, backend="onnxruntime", graph="tensorrt")
        precisions[name] = graphs["tensorrt"]["precision"]
        if graphs["tensorrt"]["engine_built"]:
            sessions["tensorrt"] = open_session(path, backend="tensorrt")
            precisions["tensorrt"] = graphs["tensorrt"]["precision"]
        else:
            skipped["tensorrt"] = graphs["tensorrt"]["engine_missing"]
    if "coreml" in graphs:
        if sys.platform == "darwin":
            sessions["coreml"] = open_session(path, backend="coreml")
            precisions["coreml"] = graphs["coreml"]["precision"]
        else:
            skipped["coreml"] = f"Core ML predicts only on macOS (this is {sys.platform})"
    return sessions, precisions, skipped


def verify_bundle(path: Path, manifest: dict, corpus, segments: int, tolerance: float) -> dict:
    from neat_edge.runtimes import open_session

    reference = open_session(path, backend="torch")
    data, name = read_corpus(corpus, segments, reference.config.segment_len)
    candidates, precisions, skipped = verification_sessions(path, manifest)
    report = parity_report(reference, candidates, data, precisions)
    decode = (decode_parity_report(reference, candidates, data, precisions=precisions)
              if manifest.get("decode") and reference.decode_graphs else None)
    for result in (*report["backends"].values(), *(decode or {}).get("backends", {}).values()):
        result["passed"] = backend_passed(result, tolerance, INT8_BPB_TOLERANCE if result["precision"] == "int8"
                                          else BPB_TOLERANCE)
    if decode is not None:
        decode["reference"]["passed"] = decode["reference"]["max_abs_logprob_diff"] <= tolerance
    worst = max((r["max_abs_logprob_diff"] for r in report["backends"].values()), default=0.0)
    images = image_decoder_parity(reference, candidates, precisions, tolerance)
    decoded = [decode["reference"], *decode["backends"].values()] if decode else []
    return {**report, "corpus": name, "tolerance": tolerance, "bpb_tolerance": BPB_TOLERANCE,
            "max_abs_logprob_diff": worst, "skipped": skipped, **({"image_decoder": images} if images else {}),
            **({"decode": decode} if decode else {}),
            "passed": all(r["passed"] for r in (*report["backends"].values(), *images.values(), *decoded))}


PIXEL_TOLERANCE_LOW_PRECISION = 1e-2  # fp16 graphs: well under one uint8 step (1/255) of most pixels


def image_decoder_parity(reference, candidates: dict, precisions: dict, tolerance: float) -> dict:
    """MVoT: every candidate's image-decoder graph against PyTorch's on every code of the codebook
    (placed in grids), max |Δ pixel| (pixels in [0, 1]). Empty when the bundle has no image decoder."""
    import numpy as np

    if reference.image_decoder is None:
        return {}
    cfg = reference.config
    g, k = cfg.image_grid, cfg.image_codebook_size
    grids = np.arange(-(-k // (g * g)) * g * g).reshape(-1, g, g) % k
    out = {}
    for name, session in candidates.items():
        if session.image_decoder is None:
            continue
        diff = max(float(np.abs(session.image_decoder.step({"image_codes": c[None]})["pixels"]
                                - reference.image_decoder.step({"image_codes": c[None]})["pixels"]).max())
                   for c in grids)
        tol = tolerance if precisions.get(name) == "fp32" else PIXEL_TOLERANCE_LOW_PRECISION
        out[name] = {"max_abs_pixel_diff": diff, "tolerance": tol, "passed": diff <= tol}
    return out
