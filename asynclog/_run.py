"""Run: the probe's side of one log file — events, tensors, phases, streams, close.

Lifecycle: ``asynclog.start`` returns an open run; ``close`` (or leaving its ``with`` block, or interpreter
exit) flushes everything, waits until the writer has written the footer, and returns the file's path.
``close`` is idempotent. Every other call on a closed run raises ClosedError.

Thread safety: every method may be called from any thread of the process that started the run. A forked
child inherits the object but cannot use it (ClosedError): the writer belongs to the parent.

Cost model: ``event`` encodes its record with msgspec in the caller's thread and appends the bytes to a
batch under a lock; a batch crosses to the writer as one message when it is full or every flush interval.
``tensor`` and stream chunks are copied into the staging pool. Nothing waits for the disk.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import msgspec

from asynclog import _wire as wire
from asynclog._channel import Channel
from asynclog._format import FrameKind, encode_meta, msgpack_array, records_frame_limit
from asynclog._names import check_key
from asynclog._records import encode_record
from asynclog._snapshot import Stager, check_tensor, device_bytes, host_bytes, shuffle_hint, tensor_meta
from asynclog._stream import MutedStream, Stream
from asynclog.config import LEVELS, Config, level_rank
from asynclog.errors import ClosedError, LogInputError, QueueFullError, WriterError

__all__ = ["Run"]

_clock = time.perf_counter_ns
_now = time.time  # the wall-clock time each record carries
_INLINE_BYTES = 16 << 10  # CPU tensors up to this size travel inline with the record batch


class Accounting:
    """What logging cost the caller: calls, time inside asynclog's calls, a latency histogram, drops."""

    __slots__ = ("calls", "ns_total", "histogram", "dropped_records", "dropped_tensors", "dropped_chunks",
                 "bytes_in")

    def __init__(self) -> None:
        self.calls = 0
        self.ns_total = 0
        self.histogram = [0] * 256
        self.dropped_records = 0
        self.dropped_tensors = 0
        self.dropped_chunks = 0
        self.bytes_in = 0

    def add(self, ns: int) -> None:
        self.calls += 1
        self.ns_total += ns
        bits = ns.bit_length()  # bucket: the top three bits of ns, so quantiles are within 25 %
        self.histogram[(bits << 2) | ((ns >> (bits - 3)) & 3) if bits >= 3 else ns] += 1

    def quantile_ns(self, q: float) -> int:
        """Upper edge of the histogram bucket holding quantile ``q`` (within 25 %)."""
        target, seen = q * self.calls, 0
        for index, count in enumerate(self.histogram):
            seen += count
            if count and seen >= target:
                bits, sub = index >> 2, index & 3
                return index if bits < 3 else (4 + sub + 1) << (bits - 3)
        return 0

    def as_dict(self) -> dict:
        return {"calls": self.calls, "producer_seconds": self.ns_total / 1e9,
                "producer_p50_us": self.quantile_ns(0.5) / 1e3, "producer_p99_us": self.quantile_ns(0.99) / 1e3,
                "dropped_records": self.dropped_records, "dropped_tensors": self.dropped_tensors,
                "dropped_chunks": self.dropped_chunks, "bytes_in": self.bytes_in}


class _Phase:
    """Times a block; writes one ``phase`` record when it ends (with the exception's name if it raised)."""

    def __init__(self, run: "Run", name: str, fields: dict):
        self.run, self.name, self.fields = run, name, fields

    def __enter__(self) -> "_Phase":
        self.wall = time.time()
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        duration = time.perf_counter() - self.start
        fields = self.fields if exc_type is None else {**self.fields, "error": exc_type.__name__}
        self.run._record({"type": "phase", "name": self.name, "time": self.wall, "duration": duration,
                          "data": fields}, fields)


class Run:
    """One open log file. Made by ``asynclog.start``; see the module docstring for the contract."""

    def __init__(self, channel: Channel, stager: Stager, run_id: int, path: str, config: Config,
                 on_close: Callable[["Run"], None] = lambda run: None):
        self.path = path
        self.config = config
        self.id = run_id
        self.level = config.level
        self.result: dict | None = None
        self._rank = level_rank(config.level)
        self._gates = {lvl: (self if i <= self._rank else MUTED) for i, lvl in enumerate(LEVELS)}
        self._channel, self._stager, self._policy = channel, stager, config.policy
        self._ship_lock = threading.Lock()
        self._batch: collections.deque[bytes] = collections.deque()
        self._inline: collections.deque[tuple] = collections.deque()  # small tensors riding with records
        self._batch_nbytes = 0
        self._batch_limit = (config.batch_records, config.batch_bytes)
        # A batch ships once past batch_bytes, so one record may add at most this and its frame stay readable.
        self._record_limit = records_frame_limit(config.batch_bytes) - config.batch_bytes
        self._last_ship = time.monotonic()
        self._tids = itertools.count()
        self._keys: set[str] = set()  # tensor names already checked
        self._streams: dict[str, Stream] = {}
        self._sinks: list[_ChunkSink] = []  # told when the run stops, so a row's check is one attribute
        self._streams_lock = threading.Lock()
        self._closed = False
        self._closed_why = "run is closed"
        # Set by the channel's threads when the writer fails this run or dies; every call checks it first.
        self._fault: WriterError | None = None
        self._muted = False
        self.accounting = Accounting()
        self._on_close = on_close
        channel.attach(run_id, self._flush_if_due, self._on_fault)

    # --- level gating -----------------------------------------------------------------------------------
    def at(self, level: str) -> "Run | _MutedRun":
        """This run if it keeps ``level``, else a muted stand-in whose calls do nothing (well under 1 µs)."""
        try:
            return self._gates[level]
        except KeyError:
            raise LogInputError(f"level must be one of {', '.join(LEVELS)}, not {level!r}") from None

    def enabled(self, level: str) -> bool:
        """Whether ``level`` is kept; use it to skip preparing data that would be dropped."""
        return self.at(level) is self

    # --- records ------------------------------------------------------------------------------------------
    # Records are appended to a deque without a lock (deque.append and popleft are atomic); only shipping a
    # batch takes ``_ship_lock``. The byte count is updated without a lock too: a lost update only nudges
    # when a batch ships.
    def event(self, name: str, /, **fields: Any) -> None:
        """Log one record ``{"type": "event", "name", "time", "data": fields}``."""
        start = _clock()
        if self._closed or self._fault is not None:
            if not self._usable():
                return
        if type(name) is not str:
            raise LogInputError(f"event name must be a str, not {type(name).__name__}")
        data = encode_record({"type": "event", "name": name, "time": _now(), "data": fields}, fields)
        self._append(data, start)

    def phase(self, name: str, /, **fields: Any) -> _Phase:
        """Context manager timing a block: ``with run.phase("phase1_sum_X"): ...``."""
        if self._closed:
            raise ClosedError(self._closed_why)
        if type(name) is not str:
            raise LogInputError(f"phase name must be a str, not {type(name).__name__}")
        return _Phase(self, name, fields)

    def _record(self, record: dict, fields: dict) -> None:
        start = _clock()
        if self._closed or self._fault is not None:
            if not self._usable():
                return
        self._append(encode_record(record, fields), start)

    def _append(self, data: bytes, start: int) -> None:
        if len(data) > self._record_limit:
            raise LogInputError(f"a record of {len(data)} bytes is more than a records frame holds "
                                f"({self._record_limit}); log large arrays with run.tensor or a stream")
        batch = self._batch
        nbytes = self._batch_nbytes + len(data)
        if len(batch) + 1 >= self._batch_limit[0] or nbytes >= self._batch_limit[1]:
            self._refuse_if_full()
            batch.append(data)
            self._batch_nbytes = nbytes
            with self._ship_lock:
                self._ship_locked(self._policy)
        else:
            batch.append(data)
            self._batch_nbytes = nbytes
        acct = self.accounting
        acct.bytes_in += len(data)
        acct.add(_clock() - start)

    def _refuse_if_full(self) -> None:
        """Policy ``error``: refuse the call whose record would ship a batch into a full queue, before it is
        buffered — O(1), and the refused record is not logged (what came before stays buffered)."""
        if self._policy == "error" and self._channel.full():
            raise QueueFullError("asynclog queue is full (policy 'error'); this record was not logged")

    def _ship_locked(self, policy: str) -> bool:
        """Hand the buffered records to the channel (``_ship_lock`` held); False if ``nowait`` found it full.

        Under ``drop`` a batch that finds the queue full is dropped and counted; under ``error`` the caller
        was refused before buffering (``_refuse_if_full``), so what is buffered ships, waiting if it must.
        """
        batch, inline = self._batch, self._inline
        if policy == "nowait" and self._channel.full():
            return False
        parts = [batch.popleft() for _ in range(len(batch))]
        tensors = [inline.popleft() for _ in range(len(inline))]
        if not parts and not tensors:
            return True
        self._batch_nbytes = 0
        body = msgpack_array(parts) if parts else b""
        message = wire.encode(wire.Records(self.id, len(parts), body, tensors))
        if policy == "nowait":  # the sender's own flush: it must never wait for space only it can make
            if not self._channel.put_nowait(message):
                batch.extendleft(reversed(parts))
                inline.extendleft(reversed(tensors))
                return False
        elif not self._channel.put(message, "drop" if policy == "drop" else "block"):
            self.accounting.dropped_records += len(parts)
            self.accounting.dropped_tensors += len(tensors)
        self._last_ship = time.monotonic()
        return True

    def _flush_if_due(self) -> None:
        """Called by the sender thread each flush interval; never blocks on a busy caller or a full queue."""
        if (self._batch or self._inline) and self._ship_lock.acquire(blocking=False):
            try:
                if time.monotonic() - self._last_ship >= self._channel.flush_interval_s:
                    self._ship_locked("nowait")
            finally:
                self._ship_lock.release()

    def flush(self, durable: bool = False, timeout: float | None = None) -> None:
        """Hand everything logged so far to the writer and wait until the writer has written it.

        When this returns, all that was logged before the call is in the file (in the page cache): a
        ``kill -9`` of this process loses none of it. With ``durable`` the writer also fsyncs the file, so
        a machine crash cannot lose it either. Raises WriterError if the writer cannot write it, or does
        not answer within ``timeout`` (default ``config.timeout_s``).
        """
        if not self._usable():
            return
        self._hand_over_all()
        ask = self._channel.new_ask()
        self._channel.request(ask, wire.encode(wire.Sync(ask, self.id, durable)), "a flush", timeout)

    def _hand_over_all(self, closing: bool = False) -> None:
        for stream in list(self._streams.values()):
            stream.close() if closing else stream.flush()
        with self._ship_lock:
            self._ship_locked("block")
        self._stager.wait_copies()

    # --- tensors -------------------------------------------------------------------------------------------
    def tensor(self, name: str, tensor) -> bool:
        """Snapshot a tensor (any dtype, shape, device) into the log; see ``snapshot`` for the guarantee.

        Returns False if it was dropped under the ``drop`` policy. A tensor larger than a quarter of the
        staging pool goes through in pieces, each waiting for space.
        """
        start = time.perf_counter_ns()
        if self._closed or self._fault is not None:
            if not self._usable():
                return False
        if name not in self._keys:
            self._keys.add(check_key("tensor", name))
        t = check_tensor(name, tensor)
        meta = tensor_meta(name, next(self._tids), t)
        if meta["nbytes"] <= _INLINE_BYTES and not t.is_cuda:
            ok = self._inline_tensor(meta, t)
        else:
            ok = self._stage_bytes(meta, device_bytes(t.detach()) if t.is_cuda else host_bytes(t), t)
            if not ok:
                self.accounting.dropped_tensors += 1
        self.accounting.bytes_in += meta["nbytes"]
        self.accounting.add(time.perf_counter_ns() - start)
        return ok

    def _inline_tensor(self, meta: dict, tensor) -> bool:
        """A small CPU tensor rides with the next record batch: no pool slot, no message of its own."""
        itemsize = tensor.element_size()
        meta.update(piece=0, pieces=1, offset=0)
        data = host_bytes(tensor).tobytes()
        nbytes = self._batch_nbytes + len(data)
        full = len(self._batch) + len(self._inline) + 1 >= self._batch_limit[0] or nbytes >= self._batch_limit[1]
        if full:
            self._refuse_if_full()
        spec = _tensor_spec(meta, itemsize)
        self._inline.append((spec, data))
        self._batch_nbytes = nbytes
        if full:
            with self._ship_lock:
                self._ship_locked(self._policy)
        return True

    def _stage_bytes(self, meta: dict, flat, tensor) -> bool:
        stager = self._stager
        cuda = tensor.is_cuda
        total, piece = (flat.numel() if cuda else len(flat)), stager.max_piece()
        count = max(1, -(-total // piece))
        if cuda:
            stager.pin_for_cuda()
        itemsize = tensor.element_size()
        for i in range(count):
            lo, hi = i * piece, min(total, (i + 1) * piece)
            fill = _cuda_fill(stager, flat, lo, hi) if cuda else _cpu_fill(stager, flat, lo, hi)
            policy = self._policy if i == 0 else "block"  # never leave a tensor with missing pieces
            spec = _tensor_spec({**meta, "piece": i, "pieces": count, "offset": lo}, itemsize)
            if not stager.stage(self.id, spec, hi - lo, fill, policy, keepalive=tensor if cuda else None):
                return False
        return True

    # --- streams -------------------------------------------------------------------------------------------
    def stream(self, name: str, chunk_rows: int = 64, lookups: list[dict] | None = None) -> Stream:
        """A chunked, columnar table stream; ``append(**row)`` buffers rows, a full chunk ships and is forgotten.

        Every thread asking for the same name gets the same stream; a stream is safe to share between threads.
        ``lookups`` (fixed by the first call for a name): columns the chunks do not store, each a map
        ``{column, keys, table, key, value}``: ``column`` is read as each value of the stored column ``keys``
        looked up in the stream ``table`` (its ``key`` column to its ``value`` column); see ``format.Lookup``.
        """
        self._usable()
        stream = self._streams.get(name)
        if stream is not None:
            return stream
        with self._streams_lock:  # two threads asking for a new name at once must get one stream
            stream = self._streams.get(name)
            if stream is None:
                sink = _ChunkSink(self)
                stream = self._streams[name] = Stream(sink, check_key("stream", name), chunk_rows, lookups)
                self._sinks.append(sink)
        return stream

    def _stage_chunk(self, meta: dict, body: bytes) -> bool:
        view = memoryview(body)

        def fill(offset: int) -> None:
            self._stager.copy_bytes(offset, view)

        spec = wire.FrameSpec(int(FrameKind.CHUNK), msgspec.Raw(encode_meta(meta)), meta["stream"])
        ok = self._stager.stage(self.id, spec, len(view), fill, self._policy)
        if not ok:
            self.accounting.dropped_chunks += 1
        return ok

    # --- faults and lifecycle ------------------------------------------------------------------------------
    def _on_fault(self, error: WriterError) -> None:
        """Called from the channel's threads: the writer failed this run or died."""
        if self._fault is None:
            self._fault = error
            self._stop_sinks()

    def _stop_sinks(self) -> None:
        for sink in self._sinks:
            sink.stopped = True

    def _usable(self) -> bool:
        """The slow path of every call: raise ClosedError or the writer's failure, or return False when the
        run was muted after a write error (``on_write_error: warn``)."""
        if self._closed:
            raise ClosedError(self._closed_why)
        if self._muted:
            return False
        if self._fault is None:
            return True
        if self.config.on_write_error == "warn":
            self._muted = True
            warnings.warn(f"asynclog: logging to {self.path} stopped: {self._fault}", RuntimeWarning, stacklevel=3)
            return False
        self._fault.reported = True
        raise self._fault

    def close(self, complete: bool = True, reason: str | None = None, timeout: float | None = None) -> str:
        """Flush, wait for the writer to write the footer, and return the log's path. Safe to call twice.

        Waits at most ``timeout`` (default ``config.timeout_s``) for the writer, then raises WriterError.
        A run whose writer failed is closed as far as it can be; close raises the failure only if no
        earlier call did.
        """
        if self._closed:
            return self.path
        try:
            if self._fault is None:
                self._hand_over_all(closing=True)
            footer = {"complete": complete, "reason": reason,
                      "stats": {**self.accounting.as_dict(), "queue_high_water": self._channel.high_water}}
            ask = self._channel.new_ask()
            self.result = self._channel.request(ask, wire.encode(wire.Close(ask, self.id, footer)), "closing the run",
                                                timeout)
        except WriterError as exc:
            seen = exc.reported or (self._fault is not None and self._fault.reported)
            if not (seen or self._muted):
                raise
        finally:
            self._closed = True
            self._stop_sinks()
            self._channel.detach(self.id)
            self._on_close(self)
        return self.path

    def _forked(self) -> None:
        self._closed = True
        self._stop_sinks()
        self._closed_why = "run belongs to the parent process; a forked child cannot log to it"

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        reason = None if exc_type is None else f"closed by {exc_type.__name__}"
        self.close(reason=reason)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<asynclog.Run {self.path!r} level={self.level} {state}>"


class _ChunkSink:
    """All a Stream sees of its run: whether it may log, where a packed chunk goes, and what it cost."""

    __slots__ = ("_run", "spent", "stopped")

    def __init__(self, run: Run):
        self._run = run
        self.spent = run.accounting.add  # spent(ns): bound once, it runs on every row
        # The cheap look every row takes: set by the run when it closes or a fault arrives;
        # ``check_open`` then says what to do.
        self.stopped = run._closed or run._fault is not None

    def check_open(self) -> bool:
        """Raise ClosedError or the writer's failure; False when the run was muted after a write error."""
        return self._run._usable()

    def largest_chunk(self) -> int:
        """The largest body the staging pool takes in one piece."""
        return self._run._stager.max_piece()

    def ship(self, meta: dict, body) -> bool:
        self._run.accounting.bytes_in += len(body)
        return self._run._stage_chunk(meta, body)


def _tensor_spec(meta: dict, itemsize: int) -> wire.FrameSpec:
    return wire.FrameSpec(int(FrameKind.TENSOR), msgspec.Raw(encode_meta(meta)), meta["name"], meta["tid"],
                          itemsize, shuffle_hint(meta["dtype"], itemsize))


def _cpu_fill(stager: Stager, flat, lo: int, hi: int):
    def fill(offset: int) -> None:
        stager.copy_bytes(offset, flat[lo:hi])

    return fill


def _cuda_fill(stager: Stager, flat, lo: int, hi: int):
    def fill(offset: int):
        return stager.copy_from_device(offset, flat[lo:hi])

    return fill


class _MutedRun:
    """What ``Run.at`` returns for a level the run does not keep: every call does nothing."""

    __slots__ = ()

    def event(self, name: str, /, **fields: Any) -> None:
        return None

    def tensor(self, name: str, tensor) -> bool:
        return False

    def phase(self, name: str, /, **fields: Any) -> "_NullPhase":
        return _NULL_PHASE

    def stream(self, name: str, chunk_rows: int = 64, lookups: list[dict] | None = None) -> MutedStream:
        return MutedStream()

    def enabled(self, level: str) -> bool:
        return False


class _NullPhase:
    __slots__ = ()

    def __enter__(self) -> "_NullPhase":
        return self

    def __exit__(self, *exc) -> None:
        return None


MUTED = _MutedRun()
_NULL_PHASE = _NullPhase()

