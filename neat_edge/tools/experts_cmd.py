"""`neat experts`: the Transformer² experts a bundle (or checkpoint) can dispatch to."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from neat_edge.errors import NeatError
from neat_edge.fileio import atomic_write_json
from neat_edge.tools.common import console


def open_library(target: Path):
    """The expert library of a bundle directory or of a checkpoint directory."""
    from neat_edge.bundle import MANIFEST, open_bundle
    from neat_edge.experts import library_for_bundle, library_for_model
    from neat_edge.model.checkpoint import is_checkpoint_dir, load_checkpoint

    if (target / MANIFEST).is_file():
        bundle = open_bundle(target)
        library = library_for_bundle(bundle)
        if library is None:
            raise NeatError(f"bundle {target} was exported before expert support: re-export it")
        return library, {e["name"] for e in bundle.manifest.get("experts", [])}
    if is_checkpoint_dir(target):
        return library_for_model(load_checkpoint(target)), None
    if not target.exists():
        raise NeatError(f"bundle not found: {target}")
    raise NeatError(f"{target} is neither a bundle nor a checkpoint directory")


def experts_command(
    bundle: Path = typer.Argument(..., help="Bundle (or checkpoint) directory."),
    json_out: Path | None = typer.Option(None, "--json", help='Write [{"name", "domain"}] as JSON here.'),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
):
    """List the experts in BUNDLE/experts (files copied in later included) with their domains."""
    library, shipped = open_library(bundle)
    table = Table(title=f"experts — {bundle}")
    for col in ("name", "domain", "dispatch slot", "objective", "held-out bits/byte base → expert", "source"):
        table.add_column(col)
    for expert in library.experts.values():
        meta = expert.metadata
        slot = library.dispatch_slots.index(expert.name) if expert.name in library.dispatch_slots else None
        try:
            bpb = f"{float(meta['heldout_bits_per_byte_base']):.4f} → {float(meta['heldout_bits_per_byte_expert']):.4f}"
        except (KeyError, ValueError):
            bpb = "-"
        source = "-" if shipped is None else ("shipped" if expert.name in shipped else "added")
        table.add_row(expert.name, expert.domain, "-" if slot is None else str(slot), meta.get("objective", "-"),
                      bpb, source)
    console.print(table)
    for fname, why in library.skipped.items():
        console.print(f"skipped {fname}: {why}", markup=False)
    if json_out is not None:
        atomic_write_json(json_out, library.listing())


def train_expert_cli(ctx, name: str, domain: str | None, base: Path | None, paths: list[Path], out: Path,
                     objective: str, kl_coef: float, dispatch_head: bool, **given) -> None:
    """`neat train --expert NAME ...`: options the user left at their (base-training) defaults take the
    expert defaults (training/experts.py ExpertOptions); then, when the expert landed in the base
    checkpoint's own experts/ folder and it holds two or more experts, the dispatch head is retrained
    over them and routing / bits-per-byte are measured (BASE/dispatch_log.json)."""
    from neat_edge.model.checkpoint import is_checkpoint_dir
    from neat_edge.training.experts import ExpertOptions, train_dispatch_head, train_expert

    if base is None:
        raise NeatError("--expert needs --base CHECKPOINT (the trained model the expert adapts)")
    if not is_checkpoint_dir(base):
        raise NeatError(f"--base {base} is not a checkpoint directory")
    from neat_edge.bounded import read_json_file

    scope = read_json_file(base / "config.json", "config", 1 << 20).get("svf_scope", "latent")
    if scope != "all":
        console.print(f"note: {base} has svf_scope '{scope}': z reaches only the latent layers (much smaller "
                      "gains on a domain the base knows); 'all' in its config.json puts the local layers under z "
                      "too (same dense weights, no retraining of the base)", markup=False)
    opts = ExpertOptions(objective=objective, kl_coef=kl_coef)
    for key, value in given.items():
        source = ctx.get_parameter_source(key)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):  # given on the command line
            setattr(opts, key, value)
    result = train_expert(name, domain or "", base, paths, out, opts)
    console.print(f"[green]saved[/green] {result['file']}  held-out bits/byte {result['heldout_bits_per_byte_base']:.4f}"
                  f" (base) -> {result['heldout_bits_per_byte_expert']:.4f} (expert, best step {result['best_step']}, "
                  f"{result['train_seconds']:.0f}s)")
    own_folder = out.resolve() == (base / "experts").resolve()
    if not (dispatch_head and own_folder):
        return
    from neat_edge.experts import ExpertLibrary, base_model_id, layout_of
    from neat_edge.model.checkpoint import load_checkpoint

    model = load_checkpoint(base)
    if len(ExpertLibrary(out, layout_of(model), base_model_id(model)).names) < 2:
        console.print("dispatch head: needs two or more experts in this checkpoint (train another one)")
        return
    report = train_dispatch_head(base, seed=opts.seed)
    console.print(f"[green]saved[/green] {report['dispatch_head']}  experts {', '.join(report['experts'])}")
    for domain_name, r in report["evaluation"]["domains"].items():
        console.print(f"  {domain_name}: routing {100 * r['routing_accuracy']:.1f} % ({report['evaluation']['pass1_bytes']}"
                      f"-byte prompts)  bits/byte base "
                      f"{r['bits_per_byte_base']:.4f}, expert {r['bits_per_byte_expert']:.4f}, "
                      f"dispatch {r['bits_per_byte_dispatch']:.4f}")
