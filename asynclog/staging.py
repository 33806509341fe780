"""The staging pool: shared memory the probe copies snapshots into and the writer reads them from.

Ownership, in one place:
- The probe's process creates the pool (an anonymous ``memfd`` on Linux, an unlinked temporary file
  elsewhere) and hands its file descriptor to the writer at spawn. Both map it.
- There is no name to unlink: the memory is freed when the last process unmaps it, so a ``kill -9`` of
  either side leaves nothing behind, and the writer can still drain what the dead probe staged.
- The probe allocates, the writer releases. Space is a ring used in order: the writer writes frames in the
  order they were handed over and publishes, in the pool's first 8 bytes, the running total of bytes it has
  released. The probe compares that with its own running total of bytes allocated. No message goes back.

Layout::

    0    8  u64  bytes released so far (written by the writer only)
    8   56       reserved
    64   .       the ring (capacity bytes)
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
import threading

__all__ = ["StagingPool", "ALIGN"]

ALIGN = 64
_HEAD = 64
_RELEASED = struct.Struct("<Q")


def _round_up(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _new_fd(size: int) -> int:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("asynclog-staging", os.MFD_CLOEXEC)
    else:  # pragma: no cover - non-Linux
        f = tempfile.TemporaryFile()
        fd = os.dup(f.fileno())
        f.close()
    os.ftruncate(fd, size)
    return fd


class StagingPool:
    """A ring of ``capacity`` bytes in shared memory. Create with no ``fd`` (probe) or with one (writer)."""

    def __init__(self, capacity: int, fd: int | None = None):
        self.capacity = capacity - capacity % ALIGN
        self.fd = _new_fd(_HEAD + self.capacity) if fd is None else fd
        self.mmap = mmap.mmap(self.fd, _HEAD + self.capacity)
        self._allocated = 0  # probe side only

    # --- probe side -------------------------------------------------------------------------------------
    def prefault(self) -> threading.Thread:
        """Fault every page in, in a background thread: a copy into fresh shared memory is ~3x slower.

        It reads one byte per page and never writes: the probe may be filling the pool already (start() does
        not wait for this), and a write here would overwrite its bytes. A read allocates the page; the
        probe's first write to it then costs a cheap write fault, not an allocation.
        """

        def touch() -> None:
            import numpy as np

            np.frombuffer(self.mmap, np.uint8, offset=_HEAD)[:: mmap.PAGESIZE].max()

        thread = threading.Thread(target=touch, name="asynclog-prefault", daemon=True)
        thread.start()
        return thread

    def released(self) -> int:
        return _RELEASED.unpack_from(self.mmap, 0)[0]

    def max_piece(self) -> int:
        """Largest single allocation: a quarter of the ring, so several pieces are in flight at once."""
        return max(ALIGN, self.capacity // 4 // ALIGN * ALIGN)

    def try_allocate(self, nbytes: int) -> tuple[int, int] | None:
        """Reserve ``nbytes`` contiguous bytes; return (offset in the mapping, release mark) or None if full.

        The release mark is what the writer publishes once it is done with the piece; a piece that would
        straddle the end of the ring skips the tail, and the skipped bytes are released with it.
        """
        n = _round_up(max(nbytes, 1))
        if n > self.capacity:
            raise ValueError(f"piece of {nbytes} bytes exceeds the staging pool of {self.capacity}")
        pos = self._allocated % self.capacity
        skip = self.capacity - pos if pos + n > self.capacity else 0
        if self._allocated + skip + n - self.released() > self.capacity:
            return None
        self._allocated += skip + n
        start = 0 if skip else pos
        return _HEAD + start, self._allocated

    # --- writer side ------------------------------------------------------------------------------------
    def view(self, offset: int, nbytes: int) -> memoryview:
        return memoryview(self.mmap)[offset : offset + nbytes]

    def release(self, mark: int) -> None:
        """Publish that everything allocated up to ``mark`` has been written."""
        _RELEASED.pack_into(self.mmap, 0, mark)

    def close(self) -> None:
        """Unmap and close this process's handle; the memory goes once every process has closed it."""
        try:
            self.mmap.close()
        except BufferError:  # a view is still alive somewhere; the mapping goes with the process
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass
