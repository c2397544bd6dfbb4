"""Exclusive locks that keep two chdl processes from writing one output (a training run folder, a dataset).

A lock is a POSIX record lock (``fcntl.lockf``) on a small file holding the holder's pid. The OS drops it when
the process ends, however it ends (SIGKILL too), so a killed writer never leaves its output locked; and, unlike
``flock``, processes forked from the holder (DataLoader workers, a curate pool) do not share it. Being per
process, a second claim from the same process is not refused. On a filesystem without lock support (ENOLCK)
nothing is locked, as before locks existed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from acquisition import files


class LockHeld(RuntimeError):
    """Another process holds the lock; ``pid`` is what it wrote into the lock file ("unknown" if nothing)."""

    def __init__(self, path: Path, pid: str):
        super().__init__(f"{path}: locked by pid {pid}")
        self.path, self.pid = path, pid


def _written_pid(fd: int) -> str:
    """The pid a lock file holds (as its holder wrote it), "unknown" if nothing."""
    return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"


def _try_lock(fd: int) -> str | None:
    """Take the exclusive lock of the open file ``fd`` if no other process holds it: None then (also where the
    filesystem has no lock support, ENOLCK: nothing is locked); else the holder's pid as written in the file."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return _written_pid(fd)
    return None


def take_lock(path: Path) -> int:
    """Open ``path`` (created if needed, mode 0666 less the umask: group-writable under umask 002, so a colleague's
    chdl can take it after this process ends) and take its exclusive lock, held while the returned descriptor is
    open; the file then holds this process's pid. Raises :class:`LockHeld` if another process holds it (another
    user's too), OSError if the file cannot be created, or if a lock file another user left cannot be opened or
    replaced by this one (its ``strerror`` says so and names the file)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # another user's lock file (0644 before 2026-12-02): held, or left by a process that ended
        if not os.path.lexists(path):
            raise
        if (holder := lock_holder(path)) is not None:
            raise LockHeld(path, holder) from None
        try:  # nothing holds it: replace it (the folder is writable, or the claim fails further on anyway)
            os.unlink(path)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            raise PermissionError(errno.EACCES, f"a lock file another user left, which no process holds and this user "
                                                f"can neither open nor remove: remove {path}") from None
    if (holder := _try_lock(fd)) is not None:
        os.close(fd)
        raise LockHeld(path, holder)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release_lock(path: Path, fd: int) -> None:
    """Remove the lock file ``path`` and drop the lock ``fd`` (:func:`take_lock`), in that order: a process waiting
    for it then finds no file and takes a new one. (A process that opened the file just before it was removed can
    still take its lock; it then holds a lock no one else checks, the race every lock file that is removed has.)"""
    try:
        os.unlink(path)
    except OSError:
        pass
    os.close(fd)


def lock_holder(path: Path) -> str | None:
    """The pid (as written) of the process that holds the lock file ``path`` now, None if none does (or there is
    no such file). It asks by trying a shared lock on the file opened for reading (so it can ask about another
    user's lock file, which it may not write: it answered "none" there, and `chdl info` called a running curate
    stopped): for that instant this process holds that. The holder asking about its own lock gets its own pid,
    without a lock being tried (closing the file would drop every lock this process has on it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if _written_pid(fd) == str(os.getpid()):
            return str(os.getpid())
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return _written_pid(fd)
        return None
    finally:
        os.close(fd)  # (closing drops the lock if it was taken; the file is left as it was)
    return None


class OutputLockError(RuntimeError):
    """The writer lock of an output cannot be taken; the message (one line) names the output and why."""


class OutputInUse(OutputLockError):
    """Another chdl process is writing the output; the message names it and the holder's pid."""


def writer_lock_path(path: Path) -> Path:
    """The lock file of the process writing the output ``path`` (a dataset, a corpus, an evaluation, predictions),
    beside it (``.<name>.chdl-writer.lock``): the output itself may not exist yet, or be replaced."""
    return path.parent / f".{path.name}.chdl-writer.lock"


@contextlib.contextmanager
def exclusive_output(path: Path) -> Iterator[None]:
    """Held while this process writes ``path``: a second chdl process writing it (``--overwrite`` or not) is refused
    with :class:`OutputInUse`, "<path>: in use by another chdl process writing it (pid N); wait for it to end or
    stop it". Before, two writers raced: each checked the output was free, then one replaced the other's result
    (or, with --overwrite, both moved the old one aside and it was lost). Creates ``path``'s parent folder;
    :class:`OutputLockError` if it cannot, or cannot make the lock file there ("<path>: cannot write in <parent>
    (Read-only file system)"; errno and the OSError as its cause)."""
    path = Path(path)
    lock = writer_lock_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = take_lock(lock)
    except LockHeld as e:
        raise OutputInUse(f"{path}: in use by another chdl process writing it (pid {e.pid}); wait for it to end or "
                          "stop it") from None
    except OSError as e:  # a read-only folder, a file on the way
        if files.file_in_the_way(path) is not None:  # ("... (File exists)" did not say which file)
            raise OutputLockError(f"{path}: cannot create the folder it goes in"
                                  f"{files.cannot_create(path.parent, e)}") from e
        # (the folder as an absolute path: "cannot write in ." did not say which folder)
        what = f"cannot write in {path.parent.absolute()}" if path.parent.is_dir() else \
            "cannot create the folder it goes in"
        raise OutputLockError(f"{path}: {what} ({e.strerror or e})") from e
    try:
        yield
    finally:
        release_lock(lock, fd)
