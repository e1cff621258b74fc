"""`neat`: the command-line entry point (train, eval, recall, profile, export, parity, run, info, ...)."""

from __future__ import annotations

import typer

from neat_edge.tools.common import run_app
from neat_edge.tools.eval_cmd import eval_command
from neat_edge.tools.experts_cmd import experts_command
from neat_edge.tools.export_cli import export_command
from neat_edge.tools.info_cmd import info_command
from neat_edge.tools.mvot_cmd import mvot_eval_command
from neat_edge.tools.parity_cmd import parity_command
from neat_edge.tools.profile_cmd import profile_command
from neat_edge.tools.recall_cmd import recall_command
from neat_edge.tools.run_cmd import run_command
from neat_edge.tools.train_cmd import train_command

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="NEAT-Edge: train, export, verify and run.")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    """NEAT-Edge: train, export, verify and run byte-level NEAT models."""


app.command("train")(train_command)
app.command("eval")(eval_command)
app.command("recall")(recall_command)
app.command("profile")(profile_command)
app.command("export")(export_command)
app.command("parity")(parity_command)
app.command("run")(run_command)
app.command("info")(info_command)
app.command("experts")(experts_command)
app.command("mvot-eval")(mvot_eval_command)


def main() -> None:
    run_app(app)


if __name__ == "__main__":  # torchrun -m neat_edge.tools.cli train ... (what `neat train --nproc N` runs)
    main()
