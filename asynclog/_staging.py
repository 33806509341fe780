"""The staging pool: shared memory the probe copies snapshots into and the writer reads them from.

Ownership, in one place:
- The probe's process creates the pool (an anonymous ``memfd`` on Linux, an unlinked temporary file
  elsewhere) and hands its file descriptor to the writer at spawn. Both map it.
- There is no name to unlink: the memory is freed when the last process unmaps it, so a ``kill -9`` of
  either side leaves nothing behind, and the writer can still drain what the dead probe staged.
- The probe allocates, the writer releases. Space is a ring used in order: the writer writes frames in the
  order they were handed over and publishes, in the pool's first 8 bytes, the running total of bytes it has
  released. The probe compares that with its own running total of bytes allocated. No message goes back.
- Memory is taken as the ring is used, not when it is made: a run that stages nothing holds none of it. On
  the probe's side a background thread faults pages in ahead of the allocator (a copy into a page not yet
  faulted in costs several times the copy), doubling the faulted stretch each time the allocator passes its
  middle, so the probe holds at most about four times what it has staged, and never more than the pool.

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
_FAULT_FIRST = 2 << 20  # the stretch the first piece has faulted in ahead of it
_FAULT_STEP = 2 << 20  # faulted in per system call, so close() waits for at most one
_MADV_POPULATE_WRITE = 23  # Linux 5.14; Python's mmap.madvise would hold the GIL while the kernel works


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
        self._allocated = 0  # probe side only, as are the two below
        self._fault_target: int | None = 0  # the ring's first bytes faulted in or asked for; None once closed
        self._fault_lock = threading.Lock()
        self._toucher: _Toucher | None = None

    # --- probe side -------------------------------------------------------------------------------------
    def fault_in(self) -> None:
        """Fault the whole ring in now, on the caller's thread (before it is pinned for CUDA)."""
        with self._fault_lock:
            if self._fault_target is None:
                return  # closed
            self._fault_target = self.capacity
            populate = _populator(self.mmap, self.fd)
            if populate is not None:
                populate(0, _HEAD + self.capacity)

    def _fault_ahead(self, end: int) -> None:
        """The allocator passed the middle of the faulted stretch (``end``): have the toucher double it."""
        with self._fault_lock:  # taken a few times per pool, never again once it is all faulted in
            if self._fault_target is None or self._fault_target >= self.capacity:
                return  # closed meanwhile, or all asked for already
            self._fault_target = min(self.capacity, max(_FAULT_FIRST, 2 * self._fault_target, 2 * end))
            if self._toucher is None:
                self._toucher = _Toucher(self.mmap, self.fd)
            self._toucher.want(_HEAD + self._fault_target)

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
        if self._fault_target != self.capacity and 2 * (start + n) > (self._fault_target or 0):
            self._fault_ahead(start + n)
        return _HEAD + start, self._allocated

    # --- writer side ------------------------------------------------------------------------------------
    def view(self, offset: int, nbytes: int) -> memoryview:
        return memoryview(self.mmap)[offset : offset + nbytes]

    def release(self, mark: int) -> None:
        """Publish that everything allocated up to ``mark`` has been written."""
        _RELEASED.pack_into(self.mmap, 0, mark)

    def close(self) -> None:
        """Unmap and close this process's handle; the memory goes once every process has closed it."""
        with self._fault_lock:
            self._fault_target, toucher = None, self._toucher
        if toucher is not None:
            toucher.stop()  # first: it must not touch a mapping or a descriptor that is gone
        try:
            self.mmap.close()
        except BufferError:  # a view is still alive somewhere; the mapping goes with the process
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass


class _Toucher:
    """Faults a growing first stretch of the pool's mapping in, on a thread of its own.

    The thread imports nothing (an import on a second thread can hand the probe's thread a half-initialised
    module) and holds no GIL while the kernel allocates. It only faults pages in and never writes to them, so
    the probe may already be copying into them.
    """

    def __init__(self, mm: mmap.mmap, fd: int):
        self._populate = _populator(mm, fd)  # here: ctypes is imported on the caller's thread
        self._cond = threading.Condition()
        self._target = self._done = 0  # offsets in the mapping
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="asynclog-fault-ahead", daemon=True)
        if self._populate is not None:
            self._thread.start()

    def want(self, end: int) -> None:
        """Have the mapping's first ``end`` bytes faulted in (the call does not wait)."""
        with self._cond:
            if end > self._target:
                self._target = end
                self._cond.notify()

    def stop(self) -> None:
        """Stop and wait for the thread (one system call at most); safe to call twice."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._done >= self._target and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                start, end = self._done, min(self._target, self._done + _FAULT_STEP)
            if not self._populate(start, end):
                return  # pages fault in as the probe writes them
            self._done = end


def _populator(mm: mmap.mmap, fd: int):
    """A function that faults bytes ``[start, end)`` of ``mm`` in without holding the GIL, and says whether it
    could; None where no way exists.

    ``madvise(MADV_POPULATE_WRITE)`` through ctypes (which lets go of the GIL) maps every page writable, so a
    copy into it runs at full speed. Before Linux 5.14, ``posix_fallocate`` on the memfd allocates the pages
    without mapping them; a first copy then costs a minor fault per page, about a quarter of an allocation.
    """
    size = len(mm)
    ways = []
    try:
        import ctypes

        madvise = ctypes.CDLL(None, use_errno=True).madvise
        madvise.argtypes, madvise.restype = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int), ctypes.c_int
        base = ctypes.addressof(ctypes.c_char.from_buffer(mm))  # the export ends with the temporary
        ways.append(lambda lo, hi: madvise(base + lo, hi - lo, _MADV_POPULATE_WRITE) == 0)
    except (ImportError, OSError, AttributeError, TypeError, ValueError):
        pass
    if hasattr(os, "posix_fallocate"):
        ways.append(lambda lo, hi: os.posix_fallocate(fd, lo, hi - lo) is None)
    if not ways:
        return None

    def populate(start: int, end: int) -> bool:
        lo, hi = start - start % mmap.PAGESIZE, min(size, end)
        while ways:
            try:
                if hi <= lo or ways[0](lo, hi):
                    return True
            except OSError:
                pass
            ways.pop(0)  # not on this system: the next way, from now on
        return False

    return populate
