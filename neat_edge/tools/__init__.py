"""The command-line tools. This file stays import-light: the entry points (cli.py, export_cli.py,
bench_cli.py) load their libraries inside `loading()`, so a Ctrl-C while they load ends like any
other interrupt: `error: interrupted`, exit 130, no traceback."""

import contextlib
import sys

INTERRUPTED_EXIT = 130  # 128 + SIGINT, what a shell reports for a process ended by Ctrl-C


@contextlib.contextmanager
def loading():
    """Around an entry point's module-level imports: a KeyboardInterrupt there exits cleanly."""
    try:
        yield
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(INTERRUPTED_EXIT)
