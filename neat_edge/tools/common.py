"""What every CLI shares: one-line errors (tracebacks only with --debug), a rich console, numbers
checked where they enter, and Ctrl-C as `error: interrupted` with exit code 130.

run_app is the one place a command's failure becomes its exit: a NeatError (or an OSError) is one
`error: ...` line and exit 2, a usage error one line and exit 2, an interrupt one line and exit 130
(typer turns a KeyboardInterrupt into Exit(130) on its own; both roads end the same), memory running
out one line and exit 1; only a real bug says `internal error`. Every number given on a command line
is checked before the command runs: floats must be finite (NaN passes click's min/max ranges) and
integers within the option's own max or MAX_CLI_INT.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import traceback

import typer
import typer.main
from rich.console import Console

from neat_edge.errors import NeatError
from neat_edge.tools import INTERRUPTED_EXIT, loading

console = Console(stderr=True)

try:  # typer >= 0.16 vendors click; earlier releases use the click package
    from typer._click.exceptions import BadParameter, ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import BadParameter, ClickException

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


MAX_CLI_INT = (1 << 31) - 1  # an integer option without its own max: counts, sizes and seeds fit in this


def _checked(param, process):
    """param.process_value, then: every float finite, every integer within the option's max."""
    high = param.max if isinstance(getattr(param, "max", None), int) else MAX_CLI_INT

    def process_value(ctx, value):
        value = process(ctx, value)
        for v in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(v, float) and not math.isfinite(v):
                raise BadParameter(f"{v} is not a finite number", ctx=ctx, param=param)
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > high:
                raise BadParameter(f"{v} is out of range (at most {high:,})", ctx=ctx, param=param)
        return value

    return process_value


def harden(command):
    """Every parameter of `command` and its subcommands checked as _checked says (in place)."""
    for param in getattr(command, "params", []):
        if not getattr(param, "_neat_checked", False):
            param.process_value, param._neat_checked = _checked(param, param.process_value), True
    for sub in getattr(command, "commands", {}).values():
        harden(sub)
    return command


def run_app(app) -> None:
    """Run a typer app (or a function that builds one: its imports then run inside this handler, so a
    Ctrl-C while torch loads is an interrupt like any other); bad input becomes one clear line on stderr
    and a non-zero exit code."""
    debug = "--debug" in sys.argv[1:]
    try:
        if not isinstance(app, typer.Typer):
            with loading():  # the commands' imports (torch): a Ctrl-C meanwhile exits as interrupted
                app = app()
        command = harden(typer.main.get_command(app))
        code = command(standalone_mode=False)  # we print usage errors ourselves: one line, like every error
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
        _exit_interrupted()
    except MemoryError:
        if debug:
            traceback.print_exc()
        print_error("out of memory (the input or an option asks for more than this machine has)")
        sys.exit(1)
    except Exception as exc:  # an internal failure: still one line unless --debug
        if debug:
            traceback.print_exc()
        print_error(f"internal error ({type(exc).__name__}: {exc}); rerun with --debug for details")
        sys.exit(1)
    if code == INTERRUPTED_EXIT:  # typer's own KeyboardInterrupt handling returns Exit(130)
        _exit_interrupted()
    if isinstance(code, int) and code:  # typer.Exit(code) / --help's exit
        sys.exit(code)


def _exit_interrupted():
    """`error: interrupted`, exit 130; a second Ctrl-C while exiting (libraries' exit handlers run) is
    ignored rather than ending the process by the signal with a traceback."""
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    print_error("interrupted")
    sys.exit(INTERRUPTED_EXIT)


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
