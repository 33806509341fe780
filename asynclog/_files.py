"""File helpers both processes share: create a file exclusively, replace one atomically, make folders, and make
names durable.

What survives a power loss (POSIX): an fsync makes a file's bytes durable, not its name. A new name in a folder
is durable once that folder is fsynced, and a folder made since its parent was last fsynced can vanish with
everything in it. So this module remembers each folder this process makes (``makedirs``, ``mkdir``) until an
fsync of its parent covers it, and ``folders_to_sync(path)`` lists what to fsync for ``path``'s name to last:
its own folder, then the parent of each folder above it made here and not synced since. The writer process
fsyncs that list for a log before it answers the first durable flush or the close (``wire.Open`` carries it),
so ``start()`` pays no fsync; ``replacing`` (and ``atomic_write``) fsync the file, rename it into place and
fsync the list before they return.

Small and dependency-free on purpose: the writer process imports it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterable, Iterator
from typing import BinaryIO

__all__ = ["create_exclusive", "atomic_write", "replacing", "makedirs", "mkdir", "folders_to_sync", "fsync_folders",
           "open_for_writing", "write_start", "open_started"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_FOLDER = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC

_made_lock = threading.Lock()
_made: set[str] = set()  # folders this process made whose name in their parent is not known durable yet


# --- folders and their names ---------------------------------------------------------------------------------
def makedirs(path: str | os.PathLike) -> None:
    """``os.makedirs(path, exist_ok=True)``, remembering each folder it makes (see the module docstring)."""
    path = folder = os.path.abspath(os.fspath(path))
    missing = []
    while not os.path.lexists(folder) and folder != os.path.dirname(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    for folder in reversed(missing):
        try:
            mkdir(folder)
        except FileExistsError:
            pass  # another process made it meanwhile: its name is that process's to sync
    if not os.path.isdir(path):
        raise FileExistsError(errno.EEXIST, "exists and is not a folder", path)


def mkdir(path: str | os.PathLike) -> None:
    """``os.mkdir(path)`` (FileExistsError if anything is there), remembering the folder it makes."""
    path = os.path.abspath(os.fspath(path))
    os.mkdir(path)
    with _made_lock:
        _made.add(path)


def folders_to_sync(path: str | os.PathLike) -> list[str]:
    """The folders whose fsync makes ``path``'s name durable: its own folder, then, going up, the parent of
    each folder this process made and has not synced since, up to the first folder it did not make."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    folders = [folder]
    with _made_lock:
        while folder in _made:
            folder = os.path.dirname(folder)
            folders.append(folder)
    return folders


def fsync_folders(folders: Iterable[str]) -> None:
    """fsync each folder, which makes every name in it durable, and forget the folders made in them.

    As PostgreSQL does, a folder that cannot be opened for lack of read permission, or whose file system
    cannot fsync a folder (EINVAL), is passed over: nothing more can be done for its names.
    """
    with _made_lock:  # taken first: a folder made while the fsyncs run may not be covered by them
        made = set(_made)
    synced = set()
    for folder in folders:
        try:
            fd = os.open(folder, _FOLDER)
        except PermissionError:
            continue
        try:
            os.fsync(fd)
            synced.add(folder)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EBADF):
                raise
        finally:
            os.close(fd)
    with _made_lock:
        _made.difference_update(folder for folder in made if os.path.dirname(folder) in synced)


# --- log files -----------------------------------------------------------------------------------------------
def create_exclusive(path: str, mode: int = 0o644) -> None:
    """Create an empty file at ``path``; FileExistsError if anything, even a dangling symlink, is there.

    Its name is not durable yet: the writer fsyncs ``folders_to_sync(path)`` before it acknowledges a durable
    flush or a close."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, mode))


def open_for_writing(path: str, overwrite: bool) -> int:
    """Open a log file to write it from its start, never through a symlink.

    Without ``overwrite`` the file must exist already (the probe reserved it with ``create_exclusive``);
    with it, it is created or truncated.
    """
    flags = os.O_WRONLY | os.O_TRUNC | _NOFOLLOW | _CLOEXEC
    if overwrite:
        flags |= os.O_CREAT
    return os.open(path, flags, 0o644)


def write_start(path: str, data: bytes, overwrite: bool) -> None:
    """Write a log's first bytes (the probe's ``start()``), replacing whatever the reserved file held.

    All or nothing: a write that fails part way (a full disk, a file-size limit) leaves the file empty, so
    no torn header is left for a reader to stumble on.
    """
    fd = open_for_writing(path, overwrite)
    try:
        _write_all(fd, data)
    except BaseException:
        with contextlib.suppress(OSError):  # the write's own error is the one to raise
            os.ftruncate(fd, 0)
        raise
    finally:
        os.close(fd)


def open_started(path: str, start_len: int) -> int:
    """Open a log the probe started, to append after its first ``start_len`` bytes (the writer's side).

    OSError when the file is not what the probe left: a symlink, or not ``start_len`` bytes long.
    """
    fd = os.open(path, os.O_WRONLY | _NOFOLLOW | _CLOEXEC)
    size = os.fstat(fd).st_size
    if size != start_len:
        os.close(fd)
        raise OSError(f"it holds {size} bytes where the probe wrote {start_len}: changed by someone else")
    os.lseek(fd, size, os.SEEK_SET)
    return fd


# --- whole files, replaced -----------------------------------------------------------------------------------
@contextlib.contextmanager
def replacing(path: str, replace: bool = True) -> Iterator[BinaryIO]:
    """A new file beside ``path``, open for the block to write; once the block ends, it is put in place.

    The temporary file is created here, exclusively and never through a link (``O_EXCL | O_NOFOLLOW``), and
    written through the file object given, never opened again by name: a link planted at its predictable
    name cannot redirect the write. Leave the file open; a writer that wraps it (``io.TextIOWrapper``) is
    flushed and detached at the end of the block. Readers, and whatever a power loss leaves, see no file, the
    old one or the whole new one, never an empty or partial one: the temporary file is fsynced before it is
    renamed to ``path``, and ``path``'s folders (``folders_to_sync``) are fsynced after. With ``replace=False``
    an existing ``path`` is left alone (FileExistsError), race-free between processes. The temporary file is
    removed whatever happens.
    """
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"  # threads of one process write apart too
    f = os.fdopen(_create_temporary(tmp), "wb")
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if anything is there; never overwrites
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_folders(folders_to_sync(path))


def _create_temporary(tmp: str) -> int:
    """Create ``tmp`` for writing, exclusively; whatever is at that name is removed first, once: a file left by a
    crashed process that had our pid (and thread id), or a link someone planted (unlink removes the link, not
    what it points to)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    try:
        return os.open(tmp, flags, 0o644)
    except FileExistsError:
        os.unlink(tmp)
        return os.open(tmp, flags, 0o644)


def atomic_write(path: str, data: bytes | str, replace: bool = True) -> None:
    """Write ``data`` to ``path`` through ``replacing``: durable, and seen whole or not at all."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with replacing(path, replace) as f:
        f.write(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
