"""The command-line tools. This file stays import-light: the entry points (cli.py, export_cli.py,
bench_cli.py) load their libraries inside `loading()`, so a Ctrl-C while they load ends like any
other interrupt: `error: interrupted`, exit 130, no traceback."""

import contextlib
import signal
import sys

INTERRUPTED_EXIT = 130  # 128 + SIGINT, what a shell reports for a process ended by Ctrl-C
_noted: list[int] = []


def _note(signum, frame):
    _noted.append(signum)


@contextlib.contextmanager
def loading():
    """Around an entry point's imports (typer, the commands, torch): a SIGINT meanwhile is noted, not
    raised inside a half-imported library (where a bare `except:` may swallow it, or a traceback
    follows), and once the imports are done the command exits as interrupted. Imports take a second or
    two, so Ctrl-C still answers at once to a person."""
    try:
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started with SIGINT ignored (`cmd &` in a script)
            raise ValueError
        previous = signal.signal(signal.SIGINT, _note)
    except ValueError:  # not the main thread, or SIGINT ignored on purpose: not ours to take
        yield
        return
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted or _noted:
        sys.stderr.write("error: interrupted\n")
        sys.exit(INTERRUPTED_EXIT)
