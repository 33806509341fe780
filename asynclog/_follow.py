"""Following a log while its writer appends to it: what ``asynclog cat --follow`` and ``show --follow`` read.

``Follower(path)`` yields what ``Log.walk`` yields (each intact frame's header and meta, a Damage for each
stretch skipped), but at the end of the file it waits for more instead of stopping, as ``tail -f`` does.
It stops (``ended`` says why):

- ``FOOTER``: after the footer frame. A run whose probe died ends here too: the writer outlives its probe and
  closes the run with a footer marked incomplete (``footer["complete"]`` is then False).
- ``ABANDONED``: nothing will be appended any more: no process on this machine holds the file open for
  writing (the writer was killed too, or the machine's writer never started) and the file has not grown for
  ``quiet_s`` seconds. A last frame left unfinished is then the log's torn tail, yielded as a torn Damage.
  Where that cannot be told, it waits like ``tail -f`` until interrupted: the run was started on another
  machine (a log on a shared file system), or an asynclog process that might hold it belongs to another user.

A frame the writer has not finished is waited on, never reported as damage: at the end of the file, a frame
whose header or payload is cut short, or that fails its checksum with no intact frame after it, is still
being written. A failing stretch with an intact frame after it is damage, as ``Log.walk`` reports it.

Opening waits, by the same rule, for the file's first bytes (the probe writes them before its writer starts),
then opens it as ``asynclog.open`` does (``follower.log``, which decodes the records of the frames yielded).
"""

from __future__ import annotations

import enum
import os
import socket
import time
from collections.abc import Iterator

from asynclog import _format as fmt
from asynclog import _ondisk as ondisk
from asynclog._format import Damage, FrameKind
from asynclog._reader import Log
from asynclog.errors import CorruptLogError

__all__ = ["Follower", "Ended", "held_for_writing", "QUIET_S", "POLL_S"]

QUIET_S = 10.0  # how long a file nobody holds open must stay the same size before it counts as abandoned
POLL_S = 0.2  # how often the end of the file is looked at again


class Ended(enum.Enum):
    FOOTER = "footer"
    ABANDONED = "abandoned"


class _Wait(Exception):
    """The end of the file is not a whole frame yet; ``reason`` is what a torn tail would be called."""

    def __init__(self, reason: str = "log cut inside a frame header"):
        super().__init__(reason)
        self.reason = reason


class Follower:
    """The frames of one log, as they are appended. Iterate once; use as a context manager or call ``close``."""

    def __init__(self, path: str | os.PathLike, quiet_s: float = QUIET_S, poll_s: float = POLL_S):
        self.path = os.fspath(path)
        self.quiet_s, self.poll_s = quiet_s, poll_s
        self.ended: Ended | None = None
        self._file = ondisk.open_regular(self.path)
        self._grew_at, self._size = time.monotonic(), -1
        self._host: str | None = None
        self.log: Log | None = None
        try:
            self._wait_for_start()
            if self.log is not None:
                self._host = self.log.header.get("host")
        except BaseException:
            self.close()
            raise

    def _wait_for_start(self) -> None:
        """Wait until the preamble and the header frame are whole, then open the log; a file abandoned before
        that leaves ``log`` None and ``ended`` ABANDONED."""
        while True:
            try:
                self._start_written()
            except _Wait:
                if self._abandoned():
                    self.ended = Ended.ABANDONED
                    return
                time.sleep(self.poll_s)
                continue
            self.log = Log(self.path)
            return

    def _start_written(self) -> None:
        size = self._grown()
        if size < fmt.PREAMBLE_SIZE:
            raise _Wait("log cut inside its preamble")
        self._file.seek(0)
        self._version = fmt.read_preamble(self._file)  # CorruptLogError: not an asynclog file
        header = fmt.read_header(self._file, fmt.PREAMBLE_SIZE, self._version, whole=False) \
            if size >= fmt.PREAMBLE_SIZE + fmt.HEADER_SIZE else None
        if header is None or header.end > size:
            raise _Wait()

    def __iter__(self) -> Iterator[tuple[fmt.FrameHeader, dict] | Damage]:
        offset = fmt.PREAMBLE_SIZE
        while self.ended is None:
            try:
                item = self._next(offset)
            except _Wait as wait:
                if self._abandoned():
                    self.ended = Ended.ABANDONED
                    yield from self._torn_tail(offset, wait.reason)
                    return
                time.sleep(self.poll_s)
                continue
            offset += item.size if isinstance(item, Damage) else item[0].size
            if not isinstance(item, Damage) and item[0].kind == FrameKind.FOOTER:
                self.ended = Ended.FOOTER
            yield item

    def _next(self, offset: int) -> tuple[fmt.FrameHeader, dict] | Damage:
        """The frame at ``offset`` with its meta, or the Damage there; _Wait while it is not whole."""
        size = self._grown()
        if size - offset < fmt.HEADER_SIZE:
            raise _Wait()
        try:
            header = fmt.read_header(self._file, offset, self._version, whole=False)
        except CorruptLogError as exc:
            return self._damage(exc, offset + 1, size)
        if header.end > size:
            raise _Wait("log cut inside a frame payload")
        if not fmt.payload_intact(self._file, header):
            return self._damage(CorruptLogError("frame payload checksum mismatch", offset), header.end, size)
        try:
            return header, self.log.meta(header)
        except CorruptLogError as exc:
            return fmt.damage(exc, header.size)

    def _damage(self, exc: CorruptLogError, search_from: int, size: int) -> Damage:
        """Damage up to the next intact frame; _Wait when none follows yet (the writer may be mid-frame)."""
        following = fmt.find_frame(self._file, search_from, size, self._version)
        if following is None:
            raise _Wait(fmt.damage(exc, 0).reason)
        return fmt.damage(exc, following - exc.offset)

    def _torn_tail(self, offset: int, reason: str) -> Iterator[Damage]:
        size = self._grown()
        if size > offset:
            yield Damage(offset, size - offset, reason, torn=fmt.read_trailer(self._file) is None)

    # --- is anyone still writing? ---------------------------------------------------------------------
    def _grown(self) -> int:
        """The file's size now; notes when it last changed."""
        size = os.fstat(self._file.fileno()).st_size
        if size != self._size:
            self._size, self._grew_at = size, time.monotonic()
        return size

    def _abandoned(self) -> bool:
        """Nobody will append: the file has been quiet for ``quiet_s`` and no process here holds it for writing."""
        if time.monotonic() - self._grew_at < self.quiet_s:
            return False
        if held_for_writing(self.path, self._host) is False:
            return True
        self._grew_at = time.monotonic()  # held, or unknown: look again after another quiet stretch
        return False

    # --- lifecycle ------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the file (and the log); safe to call twice."""
        self._file.close()
        if self.log is not None:
            self.log.close()

    def __enter__(self) -> "Follower":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def held_for_writing(path: str, host: str | None = None) -> bool | None:
    """Whether a process on this machine has ``path`` open for writing; None when that cannot be told.

    ``host`` is the machine the run started on (its header's ``host``): on another machine the writer is not
    among this one's processes. Only processes with ``asynclog`` in their command line are looked at (the
    writer runs as ``python -m asynclog._writer``), so a check costs a few milliseconds, not a walk of every
    process's files; one of them that belongs to another user makes the answer None.
    """
    import psutil

    if host is not None and host != socket.gethostname():
        return None
    try:
        target = os.stat(path)
    except OSError:
        return False
    unknown = False
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid == os.getpid() or not any("asynclog" in part for part in proc.info["cmdline"] or ()):
            continue
        try:
            files = proc.open_files()
        except psutil.AccessDenied:
            unknown = True
            continue
        except psutil.NoSuchProcess:
            continue
        if any(f.mode != "r" and _same_file(f.path, target) for f in files):
            return True
    return None if unknown else False


def _same_file(path: str, target: os.stat_result) -> bool:
    try:
        found = os.stat(path)
    except OSError:
        return False
    return (found.st_dev, found.st_ino) == (target.st_dev, target.st_ino)


