"""What every CLI shares: one-line errors (tracebacks only with --debug), a rich console."""

from __future__ import annotations

import sys
import traceback

import typer
from rich.console import Console

from neat_edge.errors import NeatError

console = Console(stderr=True)


def run_app(app: typer.Typer) -> None:
    """Run a typer app; bad input becomes one clear line on stderr and a non-zero exit code."""
    debug = "--debug" in sys.argv[1:]
    try:
        app()  # usage errors are reported by typer itself (one line + usage, exit 2)
    except (NeatError, OSError) as exc:
        if debug:
            traceback.print_exc()
        msg = str(exc) if isinstance(exc, NeatError) else f"{exc.strerror or exc}: {exc.filename or ''}".strip()
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # an internal failure: still one line unless --debug
        if debug:
            traceback.print_exc()
        print(f"error: internal error ({type(exc).__name__}: {exc}); rerun with --debug for details",
              file=sys.stderr)
        sys.exit(1)


def debug_option() -> bool:
    return typer.Option(False, "--debug", help="Show full tracebacks on errors.")
