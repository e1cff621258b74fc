"""What every CLI shares: one-line errors (tracebacks only with --debug), a rich console."""

from __future__ import annotations

import sys
import traceback

import typer
from rich.console import Console

from neat_edge.errors import NeatError

console = Console(stderr=True)

try:  # typer >= 0.16 vendors click; earlier releases use the click package
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import ClickException

    NoArgsIsHelpError = getattr(__import__("click.exceptions").exceptions, "NoArgsIsHelpError", ())


def one_line(message: str) -> str:
    """A message as one printable line: newlines and other control characters (from a file name, a
    prompt, a library's message) are escaped, so `error: ...` is always exactly one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))


def print_error(message: str) -> None:
    """`error: message` on stderr, whatever stderr's encoding (a non-UTF-8 file name still prints)."""
    line = f"error: {one_line(message)}\n"
    stream = sys.stderr
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        stream.write(line.encode(encoding, "backslashreplace").decode(encoding))
        stream.flush()
    except (OSError, ValueError):  # stderr closed or gone: the exit code still says it failed
        pass


def run_app(app: typer.Typer) -> None:
    """Run a typer app; bad input becomes one clear line on stderr and a non-zero exit code."""
    debug = "--debug" in sys.argv[1:]
    try:
        code = app(standalone_mode=False)  # we print usage errors ourselves: one line, like every error
    except NoArgsIsHelpError as exc:  # a bare command: its help, as typer shows it
        exc.show()
        sys.exit(exc.exit_code)
    except ClickException as exc:  # usage errors: unknown option, bad value, missing argument
        name = getattr(getattr(exc, "ctx", None), "command_path", None) or "the command"
        print_error(f"{exc.format_message()} (see {name} --help)")
        sys.exit(exc.exit_code or 2)
    except (NeatError, OSError) as exc:
        if debug:
            traceback.print_exc()
        msg = str(exc) if isinstance(exc, NeatError) else f"{exc.strerror or exc}: {exc.filename or ''}".strip()
        print_error(msg)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        print_error("interrupted")
        sys.exit(130)
    except Exception as exc:  # an internal failure: still one line unless --debug
        if debug:
            traceback.print_exc()
        print_error(f"internal error ({type(exc).__name__}: {exc}); rerun with --debug for details")
        sys.exit(1)
    if isinstance(code, int) and code:  # typer.Exit(code) / --help's exit
        sys.exit(code)


def check_torch_device(device: str) -> None:
    """--device for PyTorch work: cpu, cuda or cuda:N, and CUDA only where a GPU is visible."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise NeatError(f"unknown --device '{device}' (choose cpu, cuda or cuda:N)")
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise NeatError("--device cuda asked for, but no CUDA device is available")


def debug_option() -> bool:
    return typer.Option(False, "--debug", help="Show full tracebacks on errors.")
