"""A cache of the rows ``ls``, ``sweep`` and ``scan`` show: one small file in each folder that holds runs.

Reading a run's summary, header frame and footer costs a fraction of a millisecond, which over 10,000 runs is
most of a sweep. The index keeps each run's row beside a stamp of the files it was read from, so a run whose
files have not changed is not read again, and a run that changed (appended to, finished, replaced) or is new
is. The layout, one msgpack map per folder::

    <folder>/.asynclog-index
        kind    "asynclog.index/1"
        schema  what the rows mean: the caller's row version, columns, time zone (another schema: ignored)
        runs    {run's name in the folder: [stamp, row]}
                stamp: per file the row was read from, [name, size, mtime_ns, ctime_ns, inode]

The index is a cache, never a source of truth:

- the caller walks the folder itself and asks for the runs it found: an entry whose run is gone is dropped,
  a run without an entry (or whose stamp differs) is read;
- a file that cannot be opened, is not a regular file (a link, a FIFO), is too large, does not decode to the
  expected types, or was written for another kind or schema is ignored, and replaced at the next save (it is
  read through ``ondisk.read_bounded``, as every sidecar is);
- ``save`` replaces the file atomically (``files.atomic_write``): readers see the old index or the new one.
  Two sweeps at once may lose one's update, which only costs a re-read next time. A folder that cannot be
  written keeps its old index (or none) and is still listed;
- a run whose files were modified in the last ``RECENT_NS`` is not kept: a file can change again within one
  tick of the file system's clock and keep its stamp (git calls such entries "racily clean"), and a run being
  written right now is then read every time, so it shows as it is now.

``ASYNCLOG_NO_INDEX=1`` in the environment (or ``enabled(False)``) turns the index off: nothing is read or
written.
"""

from __future__ import annotations

import os
import time
from typing import Any, Generic, TypeVar

import msgspec

from asynclog._files import atomic_write
from asynclog._ondisk import INDEX_NAME, SidecarError, read_bounded

__all__ = ["INDEX_NAME", "NO_INDEX_ENV", "RECENT_NS", "FolderIndex", "enabled", "stamp"]

NO_INDEX_ENV = "ASYNCLOG_NO_INDEX"
RECENT_NS = 2_000_000_000  # coarser than any file system's timestamp tick (FAT's 2 s included)
_KIND = "asynclog.index/1"
_MAX_BYTES = 64 << 20  # ~250 bytes a run: a real index is far smaller

Stamp = tuple[tuple[str, int, int, int, int], ...]
Row = TypeVar("Row")


class _File(msgspec.Struct, Generic[Row]):
    kind: str
    schema: str
    runs: dict[str, tuple[Stamp, Row]]


_decoders: dict[Any, msgspec.msgpack.Decoder] = {}


def enabled(wanted: bool = True) -> bool:
    """Whether to use the index: the caller wants it and ``ASYNCLOG_NO_INDEX`` is not set (or is empty or 0)."""
    return wanted and os.environ.get(NO_INDEX_ENV, "") in ("", "0")


def stamp(folder: str, names: list[str]) -> Stamp:
    """What identifies the present contents of the files ``names`` in ``folder``; a missing file is left out,
    so its appearing changes the stamp. Take it before reading the files: a change during the read then shows
    as a stamp that no longer matches, never as a stale row under a new stamp."""
    found = []
    for name in names:
        try:
            st = os.stat(os.path.join(folder, name))
        except OSError:
            continue
        found.append((name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return tuple(found)


class FolderIndex:
    """The rows cached for the runs of one folder.

    For each run the caller found: ``get`` with the run's stamp, and on a miss read the run and ``put`` its
    row; then ``save`` once. ``row_type`` is the msgspec type of a row (a tuple type checks each column);
    ``schema`` names what the rows mean, and an index written under another schema is ignored.
    """

    def __init__(self, folder: str, schema: str, row_type: Any):
        self.path = os.path.join(folder, INDEX_NAME)
        self._schema = schema
        self._old = _load(self.path, schema, row_type)
        self._new: dict[str, tuple[Stamp, Any]] = {}

    def get(self, name: str, stamp: Stamp):
        """The row kept for run ``name`` if it was read from files with this very stamp, else None."""
        entry = self._old.get(name)
        if entry is None or entry[0] != stamp:
            return None
        self._new[name] = entry
        return entry[1]

    def put(self, name: str, stamp: Stamp, row) -> None:
        """Keep ``row``, read from files stamped ``stamp``; not if they were modified a moment ago (or in the
        future: a clock ahead of ours), nor if msgpack cannot hold it (a name that is not UTF-8, an int
        beyond 64 bits): that run is read every time, the others are still kept."""
        now = time.time_ns()
        if any(now - mtime < RECENT_NS for _, _, mtime, _, _ in stamp):
            return
        try:
            msgspec.msgpack.encode((name, row))
        except (OverflowError, UnicodeEncodeError, TypeError):
            return
        self._new[name] = (stamp, row)

    def save(self) -> None:
        """Write the runs seen since opening, if anything changed; a folder that cannot be written is left as is."""
        if self._new == self._old:
            return
        try:
            atomic_write(self.path, msgspec.msgpack.encode(_File(_KIND, self._schema, self._new)))
        except OSError:
            pass  # read-only folder, full disk, something in the way: the next sweep reads those runs again


def _load(path: str, schema: str, row_type: Any) -> dict:
    """The runs of the index at ``path``, or {} for anything that is not an index of this kind and schema."""
    try:
        data = read_bounded(path, _MAX_BYTES)
    except (OSError, SidecarError):
        return {}
    try:
        found = _decoder(row_type).decode(data)
    except (msgspec.DecodeError, RecursionError):
        return {}
    return found.runs if found.kind == _KIND and found.schema == schema else {}


def _decoder(row_type: Any) -> msgspec.msgpack.Decoder:
    if row_type not in _decoders:
        _decoders[row_type] = msgspec.msgpack.Decoder(_File[row_type])
    return _decoders[row_type]
