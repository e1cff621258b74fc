"""One exception type for every user-facing failure: the CLIs print its message as one line."""


class NeatError(Exception):
    """A problem the user can fix (bad file, bad flag, mismatched model): shown as one clear line."""
