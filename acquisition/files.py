"""Replacing a file whole or not at all: the one way every chdl stage writes a file a reader may open.

A file is written under a temporary name beside it (``.<name>.tmp<pid>``: the same folder, so the rename is
one POSIX ``rename(2)``, atomic on a local file system; the pid keeps two writers' temporaries apart) and
renamed onto its name when it is whole. A reader -- the dashboard, a resumed run, a user -- sees the old
file or the new one, never half of one. Anything that stops the write (a full disk, a read-only folder,
Ctrl-C) removes the temporary file and leaves the old file as it was; an ``OSError`` is raised again naming
the file the caller asked for, not the temporary.

``durable=True`` also ``fsync``s the data before the rename: for the files that are the record (a raw
recording's frames and manifest, a corpus description), where a power cut must not leave a renamed but
empty file. Views (reports, pictures, monitor state) skip it: it costs a disk flush per file.

Lives in ``acquisition`` (the first stage) so that every later stage may import it.
"""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

TEMPORARY_NAME = re.compile(r"\..+\.tmp\d+")  # what temporary_path names (".last.pt.tmp1234")


def temporary_path(path: str | os.PathLike) -> Path:
    """The temporary name ``path`` is written under by this process: ``.<name>.tmp<pid>`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, durable: bool = False) -> Iterator[Path]:
    """Yields the temporary path to write ``path``'s new content to; when the block ends without an
    exception, renames it onto ``path`` (after an fsync of the file with ``durable``). On an exception the
    temporary file is removed and the exception propagates; an OSError about the temporary file (or
    about no file: a full disk) then names ``path`` instead, errno and strerror kept. A writer that picks its format from the file name (cv2.imwrite, savefig) must be told
    the format: the temporary name ends in ``.tmp<pid>``."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, str(tmp)):
            raise type(e)(e.errno, e.strerror, str(path)) from None
        raise


def write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = False) -> None:
    """Replaces ``path`` by ``data`` whole (:func:`replacing`). OSError naming ``path`` if it cannot."""
    with replacing(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def encode_text(text: str) -> bytes:
    """``text`` as UTF-8, a file name of another encoding in it (a surrogate escape, as Python decodes one) written
    as ``\\udce4``: a report or log naming such a folder failed after all the work, every rerun."""
    return text.encode("utf-8", "backslashreplace")


def write_text(path: str | os.PathLike, text: str, *, durable: bool = False) -> None:
    """Replaces ``path`` by ``text`` (:func:`encode_text`) whole (:func:`replacing`). OSError naming ``path`` if it
    cannot."""
    write_bytes(path, encode_text(text), durable=durable)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Removes the temporary files (:func:`temporary_path` names) that writes cut short by a kill left in
    ``folder``; returns them. Only for a folder no other process writes to (its writer holds a lock)."""
    folder = Path(folder)
    stale = [p for p in folder.glob(".*.tmp*") if TEMPORARY_NAME.fullmatch(p.name) and p.is_file()] \
        if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The nearest path above ``path`` that exists and is not a folder (``out.txt`` for ``out.txt/x/y.json``; a
    broken symlink too): what makes ``path`` impossible to create; None if there is none."""
    return next((a for a in Path(path).parents if os.path.lexists(a) and not a.is_dir()), None)


def cannot_create(path: str | os.PathLike, error: OSError) -> str:
    """How a one-line "cannot create ..." message about the folder ``path`` ends: ": <x> is a file, not a folder"
    (or a broken symlink) where one is in the way above it (the OS says only "File exists" or "Not a directory"),
    else " (<the OS's reason>)"."""
    blocker = file_in_the_way(Path(path) / "_")
    if blocker is not None:
        kind = "a broken symlink" if blocker.is_symlink() and not blocker.exists() else "a file"
        return f": {blocker} is {kind}, not a folder"
    return f" ({error.strerror or error})"
