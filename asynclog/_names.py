"""What a name may be: checked at the call site, so a bad one never reaches the writer or the file system.

A run's name becomes a file name inside the log directory: no separators, no ``.``/``..``, no control
characters. Tensor and stream names are keys inside the log: any text, ``/`` welcome for hierarchy
(``E_batch/S_orig``), but no NUL or control characters, so ``asynclog cat | jq`` and shells show them as
they are. Every name is at most ``MAX_NAME_BYTES`` bytes of UTF-8.
"""

from __future__ import annotations

import os

from asynclog.errors import LogInputError

__all__ = ["MAX_NAME_BYTES", "check_key", "check_run_name"]

MAX_NAME_BYTES = 200
_CONTROL = frozenset(map(chr, [*range(32), 127]))
_SEPARATORS = frozenset(filter(None, ("/", "\\", os.sep, os.altsep)))


def check_key(kind: str, name) -> str:
    """A tensor's or stream's name, or LogInputError saying what is wrong with it."""
    if type(name) is not str or not name:
        raise LogInputError(f"{kind} name must be a non-empty str, not {name!r}")
    if len(name) > MAX_NAME_BYTES // 4 and len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise LogInputError(f"{kind} name is longer than {MAX_NAME_BYTES} bytes: {name[:40]!r}...")
    if not _CONTROL.isdisjoint(name):
        raise LogInputError(f"{kind} name {name!r} contains a NUL or control character")
    return name


def check_run_name(name) -> str:
    """A run's name: also one safe file-name component inside the log directory."""
    check_key("run", name)
    if name in (".", "..") or not _SEPARATORS.isdisjoint(name):
        raise LogInputError(f"run name {name!r} must be a file name, not a path (no separators, not '..'); "
                            f"pass directory= for where the log goes")
    return name
