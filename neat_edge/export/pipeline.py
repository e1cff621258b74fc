"""export_bundle: build every requested target, write the manifest, verify parity, install atomically."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from neat_edge.errors import NeatError
from neat_edge.export.bundle import Bundle, install_bundle, staging_dir, write_bundle_files
from neat_edge.export.onnx import OnnxTarget
from neat_edge.export.spec import step_spec
from neat_edge.export.verify import DEFAULT_TOLERANCE, parity_report, read_corpus
from neat_edge.model.neat import NeatModel

TARGETS = {"onnx": OnnxTarget}
PARITY_SEGMENTS = 40


def _quiet_exporter_logs() -> None:
    for name in ("torch.onnx", "torch._export", "torch.export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)


def export_bundle(model: NeatModel, out: str | Path, targets=("onnx",), verify: bool = True,
                  corpus: str | Path | None = None, segments: int = PARITY_SEGMENTS,
                  tolerance: float = DEFAULT_TOLERANCE, log=print, patching=None) -> dict:
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise NeatError(f"unknown export target '{unknown[0]}' (available here: {', '.join(TARGETS)})")
    _quiet_exporter_logs()
    out = Path(out)
    staged = staging_dir(out)
    try:
        spec = step_spec(model)
        start = time.time()

        def report_target(name, path):
            log(f"{name}: {path.name} ({path.stat().st_size / 1e6:.1f} MB) in {time.time() - start:.1f}s")

        manifest = write_bundle_files(model, spec, [TARGETS[t]() for t in targets], staged, report_target, patching)
        bundle = Bundle(staged, manifest)
        bundle.save_manifest()
        if verify:
            manifest["parity"] = verify_bundle(staged, manifest, corpus, segments, tolerance)
        bundle.save_manifest()
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    if verify and not manifest["parity"]["passed"]:
        failed = out.with_name(out.name + ".failed")
        shutil.rmtree(failed, ignore_errors=True)
        staged.rename(failed)
        worst = manifest["parity"]["max_abs_logprob_diff"]
        raise NeatError(f"parity check failed: max |Δ log-prob| {worst:.3g} > {tolerance:g}; "
                        f"bundle kept at {failed} for inspection")
    install_bundle(staged, out)
    return manifest


def verify_bundle(path: Path, manifest: dict, corpus, segments: int, tolerance: float) -> dict:
    from neat_edge.runtimes import open_session

    reference = open_session(path, backend="torch")
    data, name = read_corpus(corpus, segments, reference.config.segment_len)
    candidates = {"onnxruntime": open_session(path, backend="onnxruntime")} if "onnx" in manifest["graphs"] else {}
    report = parity_report(reference, candidates, data)
    worst = max(r["max_abs_logprob_diff"] for r in report["backends"].values())
    return {**report, "corpus": name, "tolerance": tolerance, "max_abs_logprob_diff": worst,
            "passed": bool(worst <= tolerance)}
