"""Atomic file writes, multi-file commits, checksums and bounded reads.

A process killed at any instant (SIGKILL, power cut after the fsync) leaves either the previous file or
the new one, never a half-written one: the data go to a temporary file next to the target, are
fsync'ed, then renamed over it. Files written together (a checkpoint's weights, config and trainer
state) are committed through a journal so that a reader sees the previous set or the new set, never a
mix; a bundle directory is swapped in with one rename (RENAME_EXCHANGE where the OS has it).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from neat_edge.bounded import read_json_file
from neat_edge.errors import FULL_ERRNOS, DiskFullError, NeatError

JOURNAL = ".commit-journal.json"  # the renames a multi-file commit still owes (see commit_together)
MAX_JOURNAL_BYTES = 1 << 20  # a journal lists a handful of renames


def _umask() -> int:
    """The process umask, read without changing it where /proc says it (os.umask alone must set one)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def default_mode(directory: bool = False) -> int:
    """The mode a plain open()/mkdir() would give: temporary files are created 0600 / 0700, and a
    bundle or checkpoint written through them must stay readable by whoever may read its folder."""
    return (0o777 if directory else 0o666) & ~_umask()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem / OS lets a directory be fsync'ed
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _out_of_space(exc: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of space or quota: an OSError says so by its errno; a library's
    own error (safetensors', torch's) by the OS error it quotes or, failing that, a filesystem left
    with (almost) no free blocks, looked at before the partial file is removed."""
    if isinstance(exc, OSError):
        return exc.errno in FULL_ERRNOS
    if not isinstance(exc, Exception):
        return False  # KeyboardInterrupt, SystemExit: not a write failure
    text = str(exc)
    if any(f"os error {n})" in text or f"code: {n}," in text for n in FULL_ERRNOS):
        return True
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def disk_full(path: Path, exc: BaseException) -> DiskFullError:
    errnum = exc.errno if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS else errno.ENOSPC
    kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
    return DiskFullError(f"cannot write {path}: {os.strerror(errnum).lower()} ({kept})", errnum, str(path))


def _write_temp(path: Path, writer: Callable[[Path], None]) -> Path:
    """`writer` fills a new temporary file next to `path`; it is fsync'ed and given path's mode. A write
    that runs out of space or quota is one DiskFullError, and `path` is untouched."""
    tmp = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        writer(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else default_mode())
    except BaseException as exc:
        full = not isinstance(exc, DiskFullError) and _out_of_space(exc, path.parent)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if full:
            raise disk_full(path, exc) from None
        raise
    return tmp


class _Commit:
    """Temporary files waiting to be renamed over their targets in one folder, all together."""

    def __init__(self, folder: Path):
        self.folder = folder.resolve()
        self.renames: list[tuple[Path, Path]] = []
        self.journaled = False  # past the commit point: the renames must be finished, not undone

    def commit(self) -> None:
        if not self.renames:
            return
        # The journal is the commit point: written (atomically) only once every new file is complete,
        # so after a crash recover() either finds no journal (the previous files are all still there)
        # or finishes every rename it lists.
        entries = [[tmp.name, final.name] for tmp, final in self.renames]
        journal = _write_temp(self.folder / JOURNAL, lambda t: t.write_text(json.dumps(entries)))
        os.replace(journal, self.folder / JOURNAL)
        self.journaled = True
        _fsync_dir(self.folder)
        recover(self.folder)

    def discard(self) -> None:
        for tmp, _ in self.renames:
            tmp.unlink(missing_ok=True)


_ACTIVE = threading.local()


@contextlib.contextmanager
def commit_together(folder: str | Path):
    """Every atomic_write into `folder` inside this block lands at once when the block ends (nothing
    if it raises): a checkpoint's weights, config and trainer state are never seen mixed. Nested
    blocks on the same folder join the outer one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    outer = getattr(_ACTIVE, "commit", None)
    if outer is not None and outer.folder == folder.resolve():
        yield
        return
    recover(folder)  # finish a commit a killed process left half-done before starting another
    group = _ACTIVE.commit = _Commit(folder)
    try:
        yield
        group.commit()
    except BaseException:
        if not group.journaled:  # after the journal, recover() completes the commit next time
            group.discard()
        raise
    finally:
        _ACTIVE.commit = outer


def recover(folder: str | Path) -> None:
    """Finish the renames of a multi-file commit that was interrupted after its journal was written.
    Readers of committed folders (checkpoints) call this first; without a journal it does nothing."""
    folder = Path(folder)
    journal = folder / JOURNAL
    if not journal.is_file():
        return
    try:
        entries = read_json_file(journal, "commit journal", MAX_JOURNAL_BYTES)
        pairs = [(str(a), str(b)) for a, b in entries]
    except (NeatError, ValueError, TypeError) as exc:
        raise NeatError(f"unreadable commit journal {journal}: {exc}") from None
    for tmp, final in pairs:  # plain names inside this folder only: a journal never moves files elsewhere
        if {"/", "\\", "\0"} & set(tmp + final) or final in ("", ".", "..") or not tmp.endswith(".tmp"):
            raise NeatError(f"refusing commit journal {journal}: it names {tmp!r} -> {final!r}")
        if (folder / tmp).is_file():
            os.replace(folder / tmp, folder / final)
    _fsync_dir(folder)
    journal.unlink(missing_ok=True)
    _fsync_dir(folder)


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Let `writer` fill a temporary file next to `path`, fsync it, then rename it into place (inside
    a commit_together block on path's folder: at the end of the block, together with the others)."""
    path = Path(path)
    if path.is_dir():  # checked first, so the error names the path asked for, not a temporary file
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temp(path, writer)
    group = getattr(_ACTIVE, "commit", None)
    if group is not None and group.folder == path.parent.resolve():
        group.renames.append((tmp, path))
        return path
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _renameat2(src: str | Path, dst: str | Path, flags: int) -> bool | None:
    """renameat2(src, dst, flags) (Linux): True done, None unsupported here; other failures raise OSError."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    if not hasattr(libc, "renameat2"):
        return None
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(os.fspath(src)), at_fdcwd, os.fsencode(os.fspath(dst)), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return None
    raise OSError(err, os.strerror(err), os.fspath(dst))


def rename_new(src: str | Path, dst: str | Path) -> None:
    """Rename src to dst only if dst does not exist (RENAME_NOREPLACE where the OS has it: two installs
    racing for one path cannot both win). FileExistsError when dst is there."""
    rename_noreplace = 1
    if _renameat2(src, dst, rename_noreplace) is None:
        if os.path.lexists(dst):  # no atomic form here: the check and the rename are two steps
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(dst))
        os.rename(src, dst)
    _fsync_dir(Path(dst).parent)


def exchange_paths(a: str | Path, b: str | Path) -> bool:
    """Swap two directory entries in one atomic step (Linux renameat2 RENAME_EXCHANGE, macOS renamex_np
    RENAME_SWAP). False where the OS or filesystem cannot; the caller then falls back to two renames."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    src, dst = os.fsencode(os.fspath(a)), os.fsencode(os.fspath(b))
    if hasattr(libc, "renameat2"):
        at_fdcwd, rename_exchange = -100, 2
        rc = libc.renameat2(at_fdcwd, src, at_fdcwd, dst, rename_exchange)
    elif hasattr(libc, "renamex_np"):
        rc = libc.renamex_np(src, dst, 0x2)  # RENAME_SWAP
    else:
        return False
    if rc == 0:
        _fsync_dir(Path(b).parent)
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), os.fspath(a))


@contextlib.contextmanager
def shielded():
    """A cleanup that a second Ctrl-C must not cut short (removing a staging folder after the first):
    SIGINT is held while the block runs and raised as KeyboardInterrupt after it (main thread only)."""
    held = []
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: held.append(1))
    except ValueError:  # not the main thread: nothing to hold
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held and previous is signal.default_int_handler:
        raise KeyboardInterrupt


def remove_tree(path: Path) -> None:
    """shutil.rmtree, shielded from a Ctrl-C: a staging folder is removed whole."""
    with shielded():
        shutil.rmtree(path, ignore_errors=True)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


READ_CHUNK = 1 << 20  # bytes per read of a streamed file: memory stays bounded whatever its size


def iter_file_chunks(path: str | Path, chunk: int = READ_CHUNK, limit: int | None = None) -> Iterator[bytes]:
    """The bytes of a file (or of a binary stream such as stdin's buffer) in pieces of at most `chunk`
    bytes, at most `limit` bytes in all: a prompt or a document of any size in bounded memory."""
    fh = open(path, "rb") if isinstance(path, (str, Path)) else path  # noqa: SIM115 (closed below)
    left = limit
    try:
        while left is None or left > 0:
            block = fh.read(chunk if left is None else min(chunk, left))
            if not block:
                return
            if left is not None:
                left -= len(block)
            yield block
    finally:
        if isinstance(path, (str, Path)):
            fh.close()
