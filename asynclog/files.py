"""File helpers both processes share: create a file exclusively, replace one atomically.

Small and dependency-free on purpose: the writer process imports it.
"""

from __future__ import annotations

import contextlib
import os
import threading

__all__ = ["create_exclusive", "atomic_write", "open_for_writing", "write_start", "open_started"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def create_exclusive(path: str, mode: int = 0o644) -> None:
    """Create an empty file at ``path``; FileExistsError if anything, even a dangling symlink, is there."""
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
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
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


def atomic_write(path: str, data: bytes | str, replace: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file: readers see no file, the old one or the whole new one.

    With ``replace=False`` an existing ``path`` is left alone (FileExistsError), race-free between processes.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"  # threads of one process write apart too
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileExistsError:  # left by a crashed process that had our pid (and thread id)
        os.unlink(tmp)
        fd = os.open(tmp, flags, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if anything is there; never overwrites
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
