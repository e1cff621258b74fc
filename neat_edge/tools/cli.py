"""`neat`: the command-line entry point (train, eval, recall, profile, export, parity, run, info, ...).

The commands (and torch, which train imports) are loaded by build_app, inside run_app's handler: a
Ctrl-C while they load is `error: interrupted`, exit 130, like one during the work itself."""

from __future__ import annotations

from neat_edge.tools import loading

with loading():
    import typer

    from neat_edge.tools.common import run_app


def build_app() -> typer.Typer:
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

    for name, command in (("train", train_command), ("eval", eval_command), ("recall", recall_command),
                          ("profile", profile_command), ("export", export_command), ("parity", parity_command),
                          ("run", run_command), ("info", info_command), ("experts", experts_command),
                          ("mvot-eval", mvot_eval_command)):
        app.command(name)(command)
    return app


def __getattr__(name: str):
    if name == "app":  # `from neat_edge.tools.cli import app` (tests, typer's CliRunner): built on first use
        globals()["app"] = built = build_app()
        return built
    raise AttributeError(name)


def main() -> None:
    run_app(build_app)


if __name__ == "__main__":  # torchrun -m neat_edge.tools.cli train ... (what `neat train --nproc N` runs)
    main()
