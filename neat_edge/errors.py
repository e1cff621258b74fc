"""One exception type for every user-facing failure: the CLIs print its message as one line.

NeatError is a ValueError, the type a Python caller expects for a bad argument or a bad file, so code
that already catches ValueError around the API keeps working; the CLIs catch NeatError first.
"""

import errno
import os


class NeatError(ValueError):
    """A problem the user can fix (bad file, bad flag, mismatched model): shown as one clear line."""


class DiskFullError(NeatError, OSError):
    """A write that found no space (ENOSPC) or no quota (EDQUOT) left: the file it was replacing is
    untouched. Also an OSError, so callers that handle write failures as OSErrors still do."""

    def __init__(self, message: str, errnum: int = errno.ENOSPC, filename: str | None = None):
        super().__init__(message)
        self.errno, self.strerror, self.filename = errnum, os.strerror(errnum), filename

    def __str__(self) -> str:  # the message, not OSError's "[Errno 28] ..."
        return str(self.args[0])


FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
