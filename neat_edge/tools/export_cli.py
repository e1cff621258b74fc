"""`neat-export` (also `neat export`): build a bundle and verify it against PyTorch."""

from __future__ import annotations

from pathlib import Path

from neat_edge.tools import loading

with loading():  # a Ctrl-C while the CLI loads: `error: interrupted`, exit 130
    import typer

    from neat_edge.errors import NeatError
    from neat_edge.tools.common import console, run_app


def export_command(
    out: Path = typer.Option(..., "--out", help="Bundle directory to write."),
    target: str = typer.Option("onnx", "--target", help="onnx, coreml, tensorrt, all (every target buildable "
                               "here), triton (a Triton Inference Server repository for a bundle), or web (a static "
                               "folder: ONNX Runtime Web + the neat.js runtime + a demo page; docs/web.md)."),
    precision: str | None = typer.Option(
        None, "--precision", help="fp32 | fp16 | int8 (onnx, tensorrt; calibrated) | coreml weight compression int8, "
                                  "palette4/6/8; default: onnx fp32, coreml and tensorrt fp16."),
    calibration: list[Path] | None = typer.Option(
        None, "--calibration", help="int8: byte files (or directories) to calibrate on, each one stream: "
                                    "--calibration FILES... (default: CPython sources)."),
    calibration_method: str = typer.Option("minmax", "--calibration-method", help="int8: minmax | percentile | entropy."),
    calibration_segments: int = typer.Option(64, "--calibration-segments", min=1,
                                             help="int8: most segments calibrated on (16 per file)."),
    stateful: bool = typer.Option(False, "--stateful", help="coreml: keep the float state as Core ML states (iOS 18)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Checkpoint directory to export."),
    preset_name: str | None = typer.Option(None, "--preset", help="Export a preset's seeded init instead."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Text for the parity check (default: CPython's LICENSE.txt)."),
    segments: int = typer.Option(40, "--segments", min=1, help="Segments of the corpus for the parity check."),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="Max |Δ log-prob| accepted by the parity check."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Run the parity check after export."),
    decode: bool = typer.Option(True, "--decode/--no-decode",
                                help="Write the incremental-decoding graphs (--no-decode: a bundle for scoring only)."),
    bundle: Path | None = typer.Option(None, "--bundle", help="triton: the bundle to serve (default: export the "
                                       "model to an ONNX bundle first, beside --out as OUT.bundle); web: the ONNX "
                                       "bundle to pack (default: export the model first)."),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="triton: max_batch_size (streams per execution)."),
    instances: int = typer.Option(2, "--instances", min=1, help="triton: model instances per GPU (instance_group)."),
    idle_seconds: float = typer.Option(600.0, "--idle-seconds", min=1.0,
                                       help="triton: max_sequence_idle_microseconds, in seconds."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
):
    """Export a model (default: the bundled trained tiny checkpoint) to a verified bundle."""
    from neat_edge.bundle import check_install_target

    if target != "triton":
        check_install_target(out)  # before torch loads: a bad --out is refused in a second
    from neat_edge.export.pipeline import export_bundle
    from neat_edge.model.checkpoint import load

    if checkpoint and preset_name:
        raise NeatError("give either --checkpoint or --preset, not both")
    if target == "triton":  # a Triton model repository for a bundle (export/triton.py)
        from neat_edge.export.triton import write_repository

        if bundle is None:
            bundle = out.with_name(out.name + ".bundle")
            source = str(checkpoint) if checkpoint else (preset_name or "default")
            model = load(source)
            console.print(f"exporting [bold]{source}[/bold] -> {bundle} (the bundle the repository serves)")
            export_bundle(model, bundle, ("onnx",), verify=verify, corpus=corpus, segments=segments,
                          tolerance=tolerance, log=console.print, patching=patching_for(source, model))
        elif not (bundle / "neat.json").is_file():
            raise NeatError(f"--bundle {bundle}: not a bundle (no neat.json)")
        manifest = write_repository(bundle, out, max_batch=max_batch, instances=instances, idle_seconds=idle_seconds)
        sizing = manifest["sizing"]
        console.print(f"[green]Triton repository written:[/green] {out}  models: "
                      + ", ".join(m["name"] for m in manifest["models"])
                      + f"  state {sizing['state_bytes_per_stream'] / 2**20:.2f} MiB per stream"
                      + ("  configs parsed with Triton's model-config protobuf" if "checked" in manifest else
                         "  (configs not parsed: pip install -e \".[triton]\")"))
        for name, why in manifest["skipped"].items():
            console.print(f"not written: {name}: {why}")
        return
    if target == "web":  # a static folder a browser runs (export/web.py)
        web_export(out, bundle, precision, checkpoint, preset_name, calibration, calibration_method,
                   calibration_segments, verify=verify, corpus=corpus, segments=segments, tolerance=tolerance)
        return
    targets, not_built = select_targets(target, precision)
    if not targets:
        raise NeatError(f"no target can be built here in {precision}: "
                        + "; ".join(f"{t}: {why}" for t, why in not_built.items()))
    plan = calibration_plan(precision, calibration, calibration_method, calibration_segments, corpus)
    if stateful and "coreml" not in targets:
        raise NeatError("--stateful applies to the coreml target only")
    source = str(checkpoint) if checkpoint else (preset_name or "default")
    model = load(source)
    console.print(f"exporting [bold]{source}[/bold] ({model.cfg.name}) -> {out}")
    with console.status("exporting and verifying..."):
        manifest = export_bundle(model, out, targets, verify=verify, corpus=corpus, segments=segments,
                                 tolerance=tolerance, log=console.print, patching=patching_for(source, model),
                                 precision=precision, stateful=stateful, calibration=plan, decode=decode)
    parity = manifest.get("parity")
    if parity:
        for name, r in parity["backends"].items():
            console.print(f"parity {name} ({r['precision']}) vs torch over {parity['reference']['segments']} segments: "
                          f"max |Δ log-prob| {r['max_abs_logprob_diff']:.2e}, top-1 {r['top1_agreement']:.4f}, "
                          f"bits/byte {r['bits_per_byte']:.4f} (Δ {r['bits_per_byte_delta']:+.2e})")
        decode_report = parity.get("decode")
        for name, r in (decode_report or {}).get("backends", {}).items():
            console.print(f"decode graphs {name} ({r['precision']}): {decode_report['bytes']} greedy bytes, "
                          f"max |Δ log-prob| {r['max_abs_logprob_diff']:.2e} vs the segment step, same bytes as torch: "
                          f"{r['same_bytes_as_reference']}")
        for name, why in parity.get("skipped", {}).items():
            console.print(f"parity {name}: not run here — {why}")
    for stem, report in manifest.get("calibration", {}).get("graphs", {}).items():
        if "accuracy" not in report:  # a decode graph: its accuracy is the decode parity above
            console.print(f"int8 {stem}: {report['quantized_matmuls']} MatMuls int8 ({report.get('precision')})")
            continue
        acc = report["accuracy"]
        console.print(f"int8 {stem}: {report['quantized_matmuls']} MatMuls int8 on {report['calibration_samples']} "
                      f"calibration segments; bits/byte {acc['bits_per_byte']:.4f} vs fp32 {acc['bits_per_byte_fp32']:.4f} "
                      f"(Δ {acc['bits_per_byte_delta']:+.4f}) on {acc['corpus']}")
    console.print(f"[green]bundle written:[/green] {out}")
    report_targets(manifest, out, target, not_built)


def web_export(out: Path, bundle: Path | None, precision: str | None, checkpoint, preset_name, calibration,
               calibration_method: str, calibration_segments: int, **options) -> None:
    """--target web: pack --bundle, or export the model to an ONNX bundle in --precision first."""
    from neat_edge.export.web import export_web
    from neat_edge.model.checkpoint import load

    precision = precision or "fp32"
    if bundle is not None:
        if checkpoint or preset_name or calibration:
            raise NeatError("--bundle packs an exported bundle: --checkpoint, --preset and --calibration do not apply")
        manifest = export_web(out, bundle=bundle, precision=precision, log=console.print)
    else:
        plan = calibration_plan(precision, calibration, calibration_method, calibration_segments, options["corpus"])
        source = str(checkpoint) if checkpoint else (preset_name or "default")
        model = load(source)
        console.print(f"exporting [bold]{source}[/bold] ({model.cfg.name}) -> {out} (web, {precision})")
        manifest = export_web(out, precision=precision, model=model, patching=patching_for(source, model),
                              log=console.print, calibration=plan, **options)
    console.print(f"[green]web folder written:[/green] {out} (onnxruntime-web {manifest['web']['onnxruntime_web']}); "
                  f"serve it (python -m http.server -d {out}) and open http://localhost:8000/")


def calibration_plan(precision, files, method: str, segments: int, corpus):
    """The CalibrationPlan of an int8 export (None otherwise); --calibration needs --precision int8."""
    if precision != "int8":
        if files:
            raise NeatError("--calibration applies to --precision int8 only")
        return None
    from neat_edge.calibration import CalibrationPlan, Int8Options
    from neat_edge.calibration.reader import read_calibration_files

    plan = CalibrationPlan(options=Int8Options(method=method), max_segments=segments, corpus=corpus)
    if files:
        read_calibration_files(files)  # a missing or empty file is a one-line error now, not after the export
        plan.files = list(files)
    return plan


def select_targets(target: str, precision: str | None):
    """(targets to build, {target: why not}) for --target; `all` = every target buildable here."""
    from neat_edge.export.pipeline import TARGET_NAMES, TARGET_PRECISIONS, unbuildable_reason

    if target != "all":
        if target not in TARGET_NAMES:
            raise NeatError(f"unknown target '{target}' (choose from {', '.join(TARGET_NAMES)}, all)")
        reason = unbuildable_reason(target)
        if reason:
            raise NeatError(f"cannot build target '{target}' here: {reason}")
        return (target,), {}
    not_built = {t: unbuildable_reason(t) for t in TARGET_NAMES if unbuildable_reason(t)}
    if precision:  # `all` in one precision: only the targets that have it
        not_built.update({t: f"no {precision} variant" for t in TARGET_NAMES if precision not in TARGET_PRECISIONS[t]})
    return tuple(t for t in TARGET_NAMES if t not in not_built), not_built


def report_targets(manifest: dict, out: Path, target: str, not_built: dict) -> None:
    """Which targets were built and which not, and why. An explicitly requested TensorRT export whose
    engine could not be built exits non-zero with one line; `--target all` reports it and succeeds."""
    from neat_edge.export.pipeline import TARGET_NAMES

    graphs = manifest["graphs"]
    for name in TARGET_NAMES:
        if name in graphs:
            g = graphs[name]
            note = ""
            if name == "tensorrt" and not g["engine_built"]:
                note = f" — engine not built: {g['engine_missing']}; recipe: {out / g['trtexec']}"
            console.print(f"[green]built[/green] {name} ({g['precision']}): {out / g['file']}{note}")
        elif name in not_built:
            console.print(f"[yellow]not built[/yellow] {name}: {not_built[name]}")
    trt = graphs.get("tensorrt")
    if target == "tensorrt" and trt and not trt["engine_built"]:
        raise NeatError(f"{trt['engine_missing']}: wrote {out / trt['file']} and {out / trt['trtexec']}; "
                        f"on a machine with TensorRT and an NVIDIA GPU run: bash {out / trt['trtexec']}")


def patching_for(source: str, model):
    """(entropy model, patcher) for a model with entropy patching: from its checkpoint directory,
    or, for a preset, the seeded entropy model calibrated on the default corpus."""
    if model.cfg.patching != "entropy":
        return None
    from neat_edge.config import PRESETS
    from neat_edge.export.verify import default_corpus
    from neat_edge.model.checkpoint import DEFAULT_CHECKPOINT
    from neat_edge.model.entropy import default_patching, load_patching

    if source in PRESETS and not Path(source).exists():
        return default_patching(model.cfg, default_corpus()[0])
    directory = DEFAULT_CHECKPOINT if source == "default" else Path(source)
    found = load_patching(directory)
    if found is None:
        raise NeatError(f"{directory} uses entropy patching but holds no entropy model "
                        "(entropy_config.json, entropy_model.safetensors, patcher.json)")
    return found


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(export_command)


def spread_calibration_files(argv: list[str]) -> list[str]:
    """`--calibration a b c` (FILES..., e.g. a shell glob) -> `--calibration a --calibration b ...`,
    the repeated form typer parses; values end at the next option."""
    out, i = [], 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] == "--calibration":
            i += 1
            values = []
            while i < len(argv) and not argv[i].startswith("-"):
                values.append(argv[i])
                i += 1
            out += [v for value in values for v in ("--calibration", value)][1:] if values else []
            continue
        i += 1
    return out


def main() -> None:
    import sys

    sys.argv = [sys.argv[0], *spread_calibration_files(sys.argv[1:])]
    run_app(app)
