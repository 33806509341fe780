"""Snapshots: copy tensor bytes and stream chunks into the staging pool and hand their place to the writer.

The guarantee ``run.tensor`` gives: once it returns, the caller may modify or free its tensor.

- CPU tensors are copied before the call returns.
- CUDA tensors are copied with ``non_blocking=True`` on the tensor's current stream into the pool, which
  is page-locked with ``cudaHostRegister`` the first time a CUDA tensor arrives. A CUDA event marks the end of
  the copy, and the writer is told only after that event has completed (the producer's next call, a flush,
  or the sender's poll sees it has).
  Work the caller queues on the same stream after the call runs after the copy, so modifying the tensor
  there is safe; the source tensor is kept alive until the copy ends, so freeing it is safe too. A caller
  who modifies the tensor from another stream must synchronise with the current one first.

Pool space is handed to the writer in the order it was allocated (the writer releases it in that order),
so allocation and hand-over happen under one lock, and once any CUDA copy is pending every later
hand-over queues behind it.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from asynclog import _wire as wire
from asynclog._channel import Channel
from asynclog.errors import LogInputError, QueueFullError, WriterError

__all__ = ["Stager", "check_tensor", "tensor_meta", "host_bytes", "device_bytes", "dtype_name"]

_encode = wire.encode
_WAKE_BYTES = 256 << 10  # smaller pieces do not wake the sender (see Channel.put)
_SPARE_EVENTS = 16
_FLOAT_KINDS = ("float", "bfloat", "half", "double", "complex")


class _Pending(NamedTuple):
    event: object  # the CUDA event that marks the copy's end; None for a piece queued behind one
    message: bytes
    nbytes: int
    keepalive: object  # the source tensor, alive until its copy has ended


class Stager:
    """Allocates pool space, fills it, and hands descriptors to the channel, in allocation order.

    ``stage`` is the whole interface a producer needs (``Run.tensor`` and streams use nothing else).
    """

    def __init__(self, channel: Channel):
        self.channel = channel
        self.pool = channel.pool
        self._lock = threading.Lock()
        self._pending: collections.deque[_Pending] = collections.deque()  # copies still running, or queued behind one
        self._pool_tensor = None
        self._pinned = False
        self._spare_events: dict[int, list] = {}  # device index -> completed CUDA events, to record again
        channel.on_release(self.close)
        channel.on_poll(self._poll)

    def max_piece(self) -> int:
        """The largest body one ``stage`` call accepts."""
        return self.pool.max_piece()

    def pool_tensor(self):
        """The whole ring as one uint8 CPU tensor, so slices of it are copy targets for torch."""
        if self._pool_tensor is None:
            import torch

            self._pool_tensor = torch.frombuffer(self.pool.mmap, dtype=torch.uint8)
        return self._pool_tensor

    def stage(self, run_id: int, frame: wire.FrameSpec, nbytes: int, fill: Callable[[int], object],
              policy: str, keepalive=None) -> bool:
        """Reserve ``nbytes``, call ``fill(offset)`` to copy into it, and hand it over.

        ``fill`` returns a CUDA event when its copy is still running, else None. Returns False when the
        piece was dropped under the ``drop`` policy.
        """
        if nbytes > self.pool.max_piece():
            raise LogInputError(f"a piece of {nbytes} bytes is larger than the staging pool takes at once "
                                f"({self.pool.max_piece()}); raise staging_bytes")
        with self._lock:
            if self.failure is not None:
                raise self.failure
            if self._pending:
                self._hand_over_copied()
            if policy != "block" and self.channel.full():
                # Its descriptor could not be handed over without waiting, and space once allocated must be.
                if policy == "error":
                    raise QueueFullError("asynclog queue is full (policy 'error')")
                return False
            slot = self._allocate(nbytes, policy)
            if slot is None:
                return False
            offset, mark = slot
            event = fill(offset)
            message = _encode(wire.Staged(run_id, frame, offset, nbytes, mark))
            if event is None and not self._pending:
                self.channel.put(message, "block", wake=nbytes >= _WAKE_BYTES)
            else:  # handed over by a later call, a flush, or the sender's poll, once its copy is done
                self._pending.append(_Pending(event, message, nbytes, keepalive))
        return True

    def _allocate(self, nbytes: int, policy: str) -> tuple[int, int] | None:
        """A free slot of ``nbytes``, waiting for the writer as ``policy`` says; call with ``self._lock`` held."""
        pause = 20e-6
        deadline = time.monotonic() + self.channel.timeout_s
        while True:
            self.channel.check()
            slot = self.pool.try_allocate(nbytes)
            if slot is not None:
                return slot
            self.channel.kick()  # descriptors may be waiting in the outbox: get them to the writer
            if policy == "drop":
                return None
            if policy == "error":
                raise QueueFullError("asynclog staging pool is full (policy 'error')")
            if time.monotonic() > deadline:
                raise WriterError(f"the writer freed no staging space for {self.channel.timeout_s} s "
                                  f"(pid {self.channel.process.pid}: stopped or stuck?)")
            self._hand_over_copied()  # space comes back once the writer has the pending copies
            pause = self._sleep_unlocked(pause)

    def _sleep_unlocked(self, pause: float) -> float:
        """Sleep ``pause`` s with ``self._lock`` let go (the sender's poll and other producers go on), and
        return the next, longer pause."""
        self._lock.release()
        try:
            time.sleep(pause)
        finally:
            self._lock.acquire()
        return min(pause * 2, 1e-3)

    def copy_bytes(self, offset: int, data) -> None:
        """Copy ``data`` (bytes, a memoryview or a flat uint8 CPU array) into the pool at ``offset``: the host
        counterpart of ``copy_from_device``, for the ``fill`` that ``stage`` calls."""
        self.pool.mmap[offset : offset + len(data)] = data

    # --- CUDA ------------------------------------------------------------------------------------------
    def pin_for_cuda(self) -> None:
        """Page-lock the pool once, so device-to-host copies into it are asynchronous.

        Pinned pages stay resident, so the whole pool is faulted in first, on this thread: what is registered
        is memory that exists, as it was when the pool was faulted in at start.
        """
        if self._pinned:
            return
        import torch

        self.pool.fault_in()
        t = self.pool_tensor()
        rc = torch.cuda.cudart().cudaHostRegister(t.data_ptr(), t.numel(), 0)
        if int(rc) != 0:
            import warnings

            warnings.warn(f"asynclog: cudaHostRegister failed ({rc}); CUDA snapshots will copy synchronously")
        self._pinned = True

    def copy_from_device(self, offset: int, source) -> object:
        """Queue a ``non_blocking`` copy of the flat uint8 CUDA tensor ``source`` into the pool at ``offset``.

        The copy and the event that marks its end both go on the current stream of ``source``'s device, so work
        the caller queues there later runs after the copy. Returns that event.
        """
        import torch

        target = self.pool_tensor()[offset : offset + source.numel()]
        device = source.device.index
        if device == torch.cuda.current_device():  # the usual case: a device switch costs microseconds per call
            return self._copy_and_mark(target, source, device)
        with torch.cuda.device(device):
            return self._copy_and_mark(target, source, device)

    def _copy_and_mark(self, target, source, device: int):
        import torch

        target.copy_(source, non_blocking=True)
        spare = self._spare_events.get(device)
        # Under the stager lock (stage calls fill holding it), so only one thread pops at a time.
        event = spare.pop() if spare else torch.cuda.Event()  # creating one costs more than recording again
        event.record()  # on the current stream of the current device, which is source's here
        return event

    def _recycle(self, event) -> None:
        """Keep a completed event for a later copy on its device (a few per device are enough)."""
        spare = self._spare_events.setdefault(event.device.index, [])
        if len(spare) < _SPARE_EVENTS:
            spare.append(event)

    # --- handing over copies that finish later ------------------------------------------------------------
    # No thread waits on CUDA events: waking one per copy made every call wait for it under the GIL. The
    # producer's own calls hand over what has finished (one ``event.query()`` each), a flush or a close waits
    # for the rest, and the sender's poll hands over what finished while the probe made no call.
    def _hand_over_copied(self, wait_until: float | None = None, from_sender: bool = False) -> None:
        """Hand the pending pieces to the channel, in order, while their copies are done (with
        ``wait_until``, wait for each until then). Call with ``self._lock`` held; a CUDA error is stored
        in ``failure`` and raised on every later call."""
        pending = self._pending
        try:
            while pending:
                piece = pending[0]
                if piece.event is not None and not piece.event.query():
                    if wait_until is None:
                        return
                    self._wait_for(piece.event, wait_until)
                    continue  # the lock was let go: the sender's poll may have handed it over meanwhile
                if not self._hand_over(piece, from_sender):
                    return
        except WriterError:
            raise
        except Exception as exc:  # noqa: BLE001 - a CUDA error: the stored failure is every caller's next raise
            self.failure = WriterError(f"asynclog: copying a CUDA tensor to the host failed: {exc}")
            pending.clear()
            raise self.failure from exc

    def _hand_over(self, piece: _Pending, from_sender: bool) -> bool:
        """Move the first pending piece to the channel; False if the sender found the queue full."""
        self._pending.popleft()  # first: a Ctrl-C after the put must not leave it pending, to go twice
        try:
            if from_sender:
                if not self.channel.put_nowait(piece.message):
                    self._pending.appendleft(piece)
                    return False
            else:
                self.channel.put(piece.message, "block", wake=piece.nbytes >= _WAKE_BYTES)
        except BaseException:
            self._pending.appendleft(piece)
            raise
        if piece.event is not None:
            self._recycle(piece.event)
        return True

    def _wait_for(self, event, wait_until: float) -> None:
        """Poll ``event`` (never ``synchronize``, which cannot time out) with the lock let go in between."""
        pause = 20e-6
        while not event.query():
            self.channel.check()
            if time.monotonic() > wait_until:
                raise WriterError(f"CUDA snapshot copies did not complete within {self.channel.timeout_s} s")
            pause = self._sleep_unlocked(pause)

    def _let_copies_end(self, wait_until: float) -> None:
        """Wait (until then at most) for the pending copies to end, whatever their outcome: the writer is gone
        or done, and a copy must not land in a pool that is unmapped."""
        for piece in self._pending:
            while piece.event is not None and time.monotonic() < wait_until:
                try:
                    if piece.event.query():
                        break
                except Exception:  # noqa: BLE001 - a failed copy has ended too
                    break
                time.sleep(1e-3)

    def _poll(self) -> None:
        """The sender's backstop: hand over copies that finished after the probe's last call; never blocks."""
        if self._pending and self.failure is None and self._lock.acquire(blocking=False):
            try:
                self._hand_over_copied(from_sender=True)
            except WriterError:
                pass  # stored in failure: the probe's next call raises it
            finally:
                self._lock.release()

    failure: WriterError | None = None

    def wait_copies(self) -> None:
        """Hand over every pending copy, waiting for each (before a flush or a close)."""
        with self._lock:
            if self.failure is not None:
                raise self.failure
            self._hand_over_copied(wait_until=time.monotonic() + self.channel.timeout_s)

    def close(self) -> None:
        """Drop this process's hold on the pool (before the channel unmaps it), once no copy still runs into it;
        pieces that can no longer be handed over are let go, and their source tensors with them."""
        with self._lock:
            self._let_copies_end(time.monotonic() + self.channel.timeout_s)
            self._pending.clear()
            if self._pinned and self._pool_tensor is not None:
                import torch

                torch.cuda.cudart().cudaHostUnregister(self._pool_tensor.data_ptr())
            self._pool_tensor = None
            self._pinned = False


# --- tensors -------------------------------------------------------------------------------------------
def check_tensor(name, tensor):
    """Validate a tensor for logging; return it detached. Errors name what is wrong."""
    import torch

    if not isinstance(name, str) or not name:
        raise LogInputError(f"tensor name must be a non-empty str, not {name!r}")
    if not isinstance(tensor, torch.Tensor):
        raise LogInputError(f"run.tensor({name!r}, ...) needs a torch.Tensor, not {type(tensor).__name__}")
    if tensor.layout != torch.strided:
        raise LogInputError(f"tensor {name!r} has layout {tensor.layout}; log tensor.to_dense() instead")
    if tensor.device.type == "meta":
        raise LogInputError(f"tensor {name!r} is on the meta device and has no data to log")
    if tensor.is_quantized or tensor.is_nested:
        raise LogInputError(f"tensor {name!r} is quantized or nested; log its dequantized or padded form")
    return tensor


_dtype_names: dict = {}


def dtype_name(dtype) -> str:
    """torch.float32 -> "float32" (cached: this runs on every call)."""
    name = _dtype_names.get(dtype)
    if name is None:
        name = _dtype_names[dtype] = str(dtype).removeprefix("torch.")
    return name


def tensor_meta(name: str, tid: int, tensor) -> dict:
    return {"name": name, "tid": tid, "dtype": dtype_name(tensor.dtype), "shape": list(tensor.shape),
            "nbytes": tensor.numel() * tensor.element_size(), "time": time.time()}


def shuffle_hint(dtype: str, itemsize: int) -> bool:
    return itemsize > 1 and dtype.startswith(_FLOAT_KINDS)


def device_bytes(tensor):
    """A flat uint8 tensor over a (CUDA) tensor's bytes; a copy only when it is not contiguous."""
    import torch

    return tensor.contiguous().reshape(-1).view(torch.uint8)


def host_bytes(tensor) -> memoryview:
    """A flat byte view of a CPU tensor's memory, without a copy when it is contiguous."""
    if tensor.requires_grad:
        tensor = tensor.detach()
    if not tensor.is_contiguous():
        tensor = tensor.contiguous()
    try:
        array = tensor.numpy()
    except TypeError:  # dtypes numpy lacks (bfloat16, float8, complex32, ...)
        array = device_bytes(tensor).numpy()
    if array.size == 0:
        return memoryview(b"")
    return memoryview(array.reshape(-1)).cast("B")
