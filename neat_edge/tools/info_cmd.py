"""`neat info`: what a bundle or preset is — config, size, graph inputs/outputs, parity."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from neat_edge.config import PRESETS, NeatConfig
from neat_edge.errors import NeatError
from neat_edge.fileio import atomic_write_json
from neat_edge.tools.common import console


def describe(target: str) -> dict:
    from neat_edge.bundle import MANIFEST, open_bundle
    from neat_edge.model.checkpoint import is_checkpoint_dir, load
    from neat_edge.model.neat import count_parameters
    from neat_edge.spec import step_spec

    path = Path(target)
    if (path / MANIFEST).is_file():
        b = open_bundle(path)
        m = b.manifest
        return {"kind": "bundle", "path": str(path), "config": m["config"], "parameters": m["parameters"],
                "graphs": m["graphs"], "parity": m.get("parity"), "tools": m["tools"], "patching": b.patching,
                "decode": m.get("decode")}
    if target in PRESETS or target == "default" or is_checkpoint_dir(path):
        model = load(target)
        return {"kind": "model", "source": target, "config": model.cfg.to_dict(),
                "parameters": count_parameters(model), "graphs": {"step": step_spec(model).to_dict()}}
    raise NeatError(f"'{target}' is neither a bundle, a checkpoint directory nor a preset "
                    f"({', '.join(PRESETS)}, default)")


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def info_command(
    target: str = typer.Argument(..., metavar="BUNDLE_OR_PRESET"),
    json_out: Path | None = typer.Option(None, "--json", help="Write the description as JSON here."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
):
    """Describe a bundle, a checkpoint or a preset."""
    info = describe(target)
    cfg = NeatConfig.from_dict(info["config"])
    parity = info.get("parity") or {}
    mean_len = (parity.get("reference") or {}).get("mean_patch_length") or \
        (cfg.patch_size if cfg.patching == "fixed" else cfg.target_patch_len / 10)
    info["mean_patch_length"], info["latent_steps_per_kb"] = mean_len, 1024 / mean_len
    console.print(f"[bold]{cfg.name}[/bold] ({info['kind']}): {info['parameters']:,} parameters, "
                  f"segment {cfg.segment_len} bytes, {cfg.patching} patching, mean patch {mean_len:.2f} bytes "
                  f"({1024 / mean_len:.0f} latent steps per KB), {cfg.latent_layers} {cfg.memory_arch.upper()} layers")
    for name, graph in info["graphs"].items():
        table = Table(title=f"graph '{name}'" + (f" ({graph['file']})" if "file" in graph else ""))
        for col in ("", "name", "dtype", "shape"):
            table.add_column(col)
        for io in ("inputs", "outputs"):
            for t in graph[io]:
                table.add_row(io[:-1], t["name"], t["dtype"], escape("[" + ", ".join(map(str, t["shape"])) + "]"))
        console.print(table)
    decode = info.get("decode")
    if decode:  # the decode graphs per target and the caches they carry
        for target, graphs in decode["graphs"].items():
            console.print(f"decode graphs ({target}): " + ", ".join(f"{n} ({g['file']})" for n, g in graphs.items()))
        total = sum(4 * _numel(c["shape"][1:]) for c in decode["caches"])
        console.print(f"decode caches: {len(decode['caches'])} tensors, {total / 1024:.0f} KiB per stream (fp32)")
    if info.get("parity"):
        p = info["parity"]
        console.print(f"parity: {'passed' if p['passed'] else 'FAILED'} (max |Δ log-prob| "
                      f"{p['max_abs_logprob_diff']:.2e} over {p['reference']['segments']} segments)")
    if json_out:
        atomic_write_json(json_out, json.loads(json.dumps(info, default=str)))
