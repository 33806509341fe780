"""The writer process: takes messages from the probe, builds frames, writes them, and outlives the probe.

Started by ``Channel`` as ``python -m asynclog._writer DATA_FD BACK_FD POOL_FD POOL_CAPACITY OPTIONS`` (OPTIONS:
``wire.WriterOptions.to_argument()``).
It imports only ``wire``, ``format``, ``filters``, ``staging`` and ``files`` (no torch, no yaml), so it is up
in a fraction of a second. Its life:

1. Map the staging pool, answer ``Ready`` (the handshake). Ignore SIGINT, SIGTERM and SIGHUP: a Ctrl-C or a
   scheduler's cancel goes to the whole process group, and the probe's handlers still want to log a last
   record and close their runs. After such a signal the writer serves on for ``grace_s`` at most.
2. Serve: ``Open`` a run file and write its header frame; turn ``Records`` and ``Staged`` into frames (built
   on ``compress_threads`` threads, written in the order they arrived) and release their staging space;
   ``Sync`` answers once all before it is written (and fsynced: with the file's first fsync, the folders
   ``Open`` names, so that the file's name survives a power loss too); ``Close`` writes footer and trailer;
   ``Shutdown`` ends the loop. The periodic fsync (``fsync_interval_s``) runs behind, on a thread of its own,
   so that writing goes on while the disk catches up; a durable ``Sync`` and ``Close`` wait for it.
3. The probe is gone when the data pipe reaches end-of-file or, since a forked child of the probe may hold
   the pipe open, when this process's parent changes: write what was handed over, close every open run
   with a footer marked incomplete, and exit. No orphan remains.

Isolation: a failure handling one message fails only the run it names (a full disk, a bad path): that run
gets ``Failed`` — which reaches its next call — and its file is cut back to its last whole frame; the writer
keeps serving the other runs and keeps releasing staging space, so the probe never blocks on a dead run.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection

import msgspec

from asynclog import _format as fmt
from asynclog import _wire as wire
from asynclog._files import atomic_write, fsync_folders, open_started
from asynclog._filters import Codec

_RAW = Codec("raw")
_ON_PROBE_DEATH = "the probe process ended without closing the run"
_ON_SHUTDOWN = "the probe shut the writer down without closing the run"
_UNOPENED_KEPT = 1000  # runs whose Open failed, remembered for their later requests (a bound, not a need)
_WATCH_S = 0.25  # how often an idle writer checks that its probe is alive and no grace period has run out
_CHECKSUM = f"CRC-32C in {'hardware' if fmt.CHECKSUM_IN_HARDWARE else 'software'}"  # in the footer's stats


class RunFile:
    """One open log file: appends frames, keeps the footer index and the byte counts."""

    def __init__(self, msg: wire.Open, codec: Codec):
        self.path = msg.path
        self.codec = codec
        self.sidecar = msg.sidecar
        self.fd = open_started(msg.path, msg.start_len)  # the probe wrote the preamble and header frame
        self.offset = msg.start_len
        self.failed: str | None = None
        self.errno: int | None = None
        self.records: list[int] = []
        self.tensors: dict[str, dict[int, list[int]]] = {}
        self.streams: dict[str, list[int]] = {}
        self.stats = {"frames": 1, "records": 0, "bytes_raw": 0, "bytes_on_disk": 0}
        self.last_sync = time.monotonic()
        self.synced = 0  # the file offset the last fsync covered
        self.folders = msg.folders  # fsynced with the file, once: then the file's name is durable too
        self.syncing: Future | None = None  # an fsync running on the writer's sync thread

    def append(self, parts: list, spec: wire.FrameSpec, raw_len: int, records: int) -> None:
        """Write one built frame and index it; a failed write is cut back so the file ends on a whole frame."""
        offset = self.offset
        try:
            self._write(parts)
        except OSError:
            self._cut_back(offset)
            raise
        self.stats["frames"] += 1
        self.stats["bytes_raw"] += raw_len
        kind = spec.kind
        if kind == fmt.FrameKind.RECORDS:
            self.records.append(offset)
            self.stats["records"] += records
        elif kind == fmt.FrameKind.TENSOR:
            self.tensors.setdefault(spec.key, {}).setdefault(spec.group, []).append(offset)
        elif kind == fmt.FrameKind.CHUNK:
            self.streams.setdefault(spec.key, []).append(offset)

    def _write(self, parts: list) -> None:
        views = [memoryview(p).cast("B") for p in parts]
        while views:
            n = os.writev(self.fd, views)
            self.offset += n
            while views and n >= len(views[0]):
                n -= len(views.pop(0))
            if n:
                views[0] = views[0][n:]

    @property
    def dirty(self) -> bool:
        """Written since the last fsync (or cut back: the length changed)."""
        return self.offset != self.synced

    def _cut_back(self, offset: int) -> None:
        try:
            os.ftruncate(self.fd, offset)
            os.lseek(self.fd, offset, os.SEEK_SET)
            self.offset = offset
        except OSError:
            pass  # the reader stops at the torn frame anyway

    def fail(self, exc: BaseException, doing: str) -> str:
        """Mark the run failed (once); return the message the probe gets."""
        if self.failed is None:
            self.failed = f"{doing} {self.path} failed: {exc}"
            self.errno = getattr(exc, "errno", None)
        return self.failed

    def sync(self) -> None:
        """fsync now, after any fsync still running behind: everything written so far is durable."""
        self.settle()
        self._fsync()

    def sync_behind(self, syncer: ThreadPoolExecutor) -> None:
        """Start an fsync on ``syncer`` and return: the writer goes on appending while the disk catches up,
        where a blocking fsync would stall it (and, once the pool is full, the probe) for each interval."""
        if self.syncing is None:
            self.last_sync = time.monotonic()
            self.syncing = syncer.submit(self._fsync)

    def settle(self) -> None:
        """Wait for the fsync running behind, if any; its OSError is raised here, on the serving thread."""
        syncing, self.syncing = self.syncing, None
        if syncing is not None:
            syncing.result()

    def _fsync(self) -> None:
        upto = self.offset  # taken first: every byte written by now is covered by the fsync below
        if upto != self.synced:
            os.fsync(self.fd)
            self.synced = upto
        if self.folders:
            fsync_folders(self.folders)
            self.folders = []
        self.last_sync = time.monotonic()

    def finish(self, complete: bool, reason: str | None, probe_stats: dict) -> dict:
        """Write footer and trailer, fsync, close; return the stats the footer holds."""
        self.stats["bytes_on_disk"] = self.offset
        stats = {**probe_stats, **self.stats, "checksum": _CHECKSUM}
        raw = stats.get("bytes_raw", 0)
        stats["compression_ratio"] = round(raw / self.offset, 4) if self.offset else None
        footer = {
            "complete": complete,
            "reason": reason,
            "closed": time.time(),
            "stats": stats,
            "index": {
                "records": self.records,
                "tensors": {name: list(pieces.values()) for name, pieces in self.tensors.items()},
                "streams": self.streams,
            },
        }
        footer_offset = self.offset
        self.sync()  # the frames first: a power cut may keep the footer's sectors and lose older unsynced ones,
        # and a footer over a hole would call a torn log complete (ls, Log.complete)
        try:
            self._write(_build(_RAW, fmt.FrameKind.FOOTER, fmt.encode_meta(footer), b"") + [fmt.trailer(footer_offset)])
        except OSError:
            self._cut_back(footer_offset)
            raise
        stats["bytes_on_disk"] = self.offset
        self.sync()
        os.close(self.fd)
        self.fd = -1
        return {"complete": complete, "reason": reason, "stats": stats}

    def abandon(self) -> None:
        if self.fd >= 0:
            try:
                self.settle()  # never close a descriptor an fsync still uses
            except OSError:
                pass
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1


def _build(codec: Codec, kind: int, meta: bytes | msgspec.Raw, body, itemsize: int = 0,
           shuffle_ok: bool = False) -> list:
    """Filter the body and frame it: [prefix (header + meta), stored body, payload checksum]."""
    filt, shuffle_size, stored = codec.encode(body, itemsize, shuffle_ok)
    meta = bytes(meta)
    prefix = fmt.frame_prefix(fmt.FrameKind(kind), filt, shuffle_size, meta, len(stored), len(body))
    return [prefix, stored, fmt.frame_suffix(meta, stored)]


class _InOrder:
    """Frames built on worker threads and written in the order they were submitted.

    ``done(parts, error)`` gets the built frame or the exception building it raised: either way it runs,
    in order, so staging space is always released.
    """

    def __init__(self, threads: int):
        self.executor = ThreadPoolExecutor(threads, "asynclog-compress") if threads > 1 else None
        self.limit = 2 * threads
        self.pending: deque[tuple[Future, Callable]] = deque()

    def submit(self, build: Callable[[], list], done: Callable[[list | None, BaseException | None], None]) -> None:
        if self.executor is None:
            try:
                parts = build()
            except Exception as exc:  # noqa: BLE001 - handed to ``done``, which fails the run
                done(None, exc)
                return
            done(parts, None)
            return
        self.pending.append((self.executor.submit(build), done))
        while len(self.pending) > self.limit:
            self._complete_one()

    def flush(self) -> None:
        while self.pending:
            self._complete_one()

    def _complete_one(self) -> None:
        future, done = self.pending.popleft()
        error = future.exception()
        done(None if error else future.result(), error)


class Writer:
    """The serve loop and one handler per message type."""

    def __init__(self, data: Connection, back: Connection, pool, options: wire.WriterOptions):
        self.data, self.back, self.pool = data, back, pool
        threads = options.compress_threads or max(1, min(4, (os.cpu_count() or 2) - 1))
        self.frames = _InOrder(threads)
        self.syncer = ThreadPoolExecutor(1, "asynclog-fsync")
        self.fsync_interval = options.fsync_interval_s
        self.grace_s = options.grace_s
        self.runs: dict[int, RunFile] = {}
        self.unopened: dict[int, str] = {}  # why a run's Open failed, the answer to its later requests
        self.probe_pid = options.probe_pid  # given, not getppid(): the probe may be gone already
        self.signalled_at: float | None = None
        self.handlers = {wire.Open: self.on_open, wire.Records: self.on_records, wire.Staged: self.on_staged,
                         wire.Sync: self.on_sync, wire.Close: self.on_close}

    def serve(self) -> None:
        while True:
            if not self.data.poll(self._idle_timeout()):
                self.on_idle()
                if self._probe_gone() or self._grace_over():
                    return
                continue
            try:
                data = self.data.recv_bytes()
            except (EOFError, OSError):
                self.finish_all(_ON_PROBE_DEATH)
                return
            msg = self._decode(data)
            if isinstance(msg, wire.Shutdown):
                self.finish_all(_ON_SHUTDOWN)
                return
            if msg is not None:
                self._handle(msg)
            self._sync_due()

    def take_first(self, opening: bytes | None) -> None:
        """The Open that came on the command line, handled as if it had come through the pipe."""
        if opening is not None:
            msg = self._decode(opening)
            if msg is not None:
                self._handle(msg)

    def _decode(self, data: bytes):
        try:
            return wire.probe_decoder.decode(data)
        except msgspec.DecodeError as exc:
            self.reply(wire.Failed(0, 0, f"writer received a malformed message: {exc}"))
            return None

    def _handle(self, msg) -> None:
        """One message; whatever goes wrong fails only the run it names, never this process."""
        try:
            self.handlers[type(msg)](msg)
        except Exception as exc:  # noqa: BLE001 - isolation: see the module docstring
            run = self.runs.get(msg.run)
            text = run.fail(exc, "writing") if run else f"writer could not handle {type(msg).__name__}: {exc!r}"
            self.reply(wire.Failed(msg.run, getattr(msg, "ask", 0), text, getattr(exc, "errno", None)))
            if isinstance(msg, wire.Staged):
                self.pool.release(msg.mark)

    def _idle_timeout(self) -> float:
        if self.frames.pending:
            return 0.0
        if any(run.dirty for run in self.runs.values()) and self.fsync_interval > 0:
            return min(self.fsync_interval, _WATCH_S)
        return _WATCH_S

    def on_idle(self) -> None:
        self.frames.flush()
        self._sync_due()

    def _probe_gone(self) -> bool:
        """The probe died while something else (a forked child) holds the data pipe open: our parent changed."""
        if os.getppid() == self.probe_pid:
            return False
        while self.data.poll(0):  # what the probe wrote before it died is still in the pipe
            try:
                msg = self._decode(self.data.recv_bytes())
            except (EOFError, OSError):
                break
            if msg is not None and not isinstance(msg, wire.Shutdown):
                self._handle(msg)
        self.finish_all(_ON_PROBE_DEATH)
        return True

    def _grace_over(self) -> bool:
        if self.signalled_at is None or time.monotonic() - self.signalled_at < self.grace_s:
            return False
        self.finish_all(f"the writer was signalled and the probe did not close the run within {self.grace_s} s")
        return True

    def on_signal(self, signum, frame) -> None:
        if self.signalled_at is None:
            self.signalled_at = time.monotonic()

    def _sync_due(self) -> None:
        """Start an fsync (behind, on the sync thread) of every run whose interval has passed, and report one
        that failed; also called while busy, so a stream of frames is synced."""
        now = time.monotonic()
        for run_id, run in list(self.runs.items()):
            if run.syncing is not None and run.syncing.done():
                self._guard(run_id, run.settle, "syncing")
            if run.dirty and not run.failed and self.fsync_interval > 0 and now - run.last_sync >= self.fsync_interval:
                run.sync_behind(self.syncer)

    # --- handlers ---------------------------------------------------------------------------------------
    def on_open(self, msg: wire.Open) -> None:
        options = msg.options
        codec = Codec(options.compression, options.zstd_level, options.min_ratio)
        try:
            self.runs[msg.run] = RunFile(msg, codec)
        except OSError as exc:
            why = f"cannot take over {msg.path}: {exc}"
            if len(self.unopened) < _UNOPENED_KEPT:
                self.unopened[msg.run] = why
            self.reply(wire.Failed(msg.run, msg.ask, why, exc.errno))
            return
        if msg.ask != wire.NO_ANSWER:
            self.reply(wire.Done(msg.ask))

    def on_records(self, msg: wire.Records) -> None:
        if msg.count:
            meta = fmt.encode_meta({"count": msg.count})
            spec = wire.FrameSpec(int(fmt.FrameKind.RECORDS), msgspec.Raw(meta))
            self._submit(msg.run, spec, msg.body, None, msg.count)
        for spec, data in msg.inline:  # small tensors that rode along
            self._submit(msg.run, spec, data, None)

    def on_staged(self, msg: wire.Staged) -> None:
        self._submit(msg.run, msg.frame, self.pool.view(msg.offset, msg.nbytes), msg.mark)

    def on_sync(self, msg: wire.Sync) -> None:
        self.frames.flush()
        run = self.runs.get(msg.run)
        if run is not None and not run.failed and msg.durable:
            self._guard(msg.run, run.sync, "syncing")
        if run is None or run.failed:
            text = run.failed if run else self._not_open(msg.run)
            self.reply(wire.Failed(msg.run, msg.ask, text, run.errno if run else None))
        else:
            self.reply(wire.Done(msg.ask))

    def _not_open(self, run: int) -> str:
        return self.unopened.get(run) or f"run {run} is not open"

    def on_close(self, msg: wire.Close) -> None:
        self.frames.flush()
        run = self.runs.pop(msg.run, None)
        if run is None:
            self.reply(wire.Failed(msg.run, msg.ask, self._not_open(msg.run)))
            self.unopened.pop(msg.run, None)
            return
        footer = msg.footer
        complete = bool(footer.get("complete", True)) and not run.failed
        reason = run.failed or footer.get("reason")
        try:
            result = run.finish(complete, reason, footer.get("stats", {}))
        except OSError as exc:
            run.abandon()
            self.reply(wire.Failed(msg.run, msg.ask, run.fail(exc, "finishing"), exc.errno))
            return
        _write_sidecar(run, result)
        if run.failed:
            self.reply(wire.Failed(msg.run, msg.ask, run.failed, run.errno))
        else:
            self.reply(wire.Done(msg.ask, result))

    # --- helpers ----------------------------------------------------------------------------------------
    def _submit(self, run_id: int, spec: wire.FrameSpec, body, mark: int | None, records: int = 0) -> None:
        run = self.runs.get(run_id)
        if run is None or run.failed:  # nothing to write; the staging space still goes back in order
            self.frames.submit(list, lambda parts, error: mark is not None and self.pool.release(mark))
            return
        codec = run.codec

        def build() -> list:
            return _build(codec, spec.kind, spec.meta, body, spec.itemsize, spec.shuffle)

        def done(parts: list | None, error: BaseException | None) -> None:
            try:
                if error is not None:
                    self._report(run_id, run.fail(error, "building a frame for"), None)
                elif not run.failed:
                    self._guard(run_id, lambda: run.append(parts, spec, len(body), records), "writing")
            finally:
                if mark is not None:
                    self.pool.release(mark)

        self.frames.submit(build, done)

    def _guard(self, run_id: int, action: Callable[[], None], doing: str) -> None:
        """Run a file operation; on OSError mark the run failed and tell the probe, once."""
        try:
            action()
        except OSError as exc:
            run = self.runs.get(run_id)
            if run is not None and not run.failed:
                self._report(run_id, run.fail(exc, doing), exc.errno)

    def _report(self, run_id: int, text: str, errno: int | None) -> None:
        self.reply(wire.Failed(run_id, 0, text, errno))

    def finish_all(self, reason: str) -> None:
        """Close every open run with a footer marked incomplete (after writing all that was handed over)."""
        self.frames.flush()
        for run_id, run in list(self.runs.items()):
            try:
                result = run.finish(False, run.failed or reason, {})
                _write_sidecar(run, result)
            except OSError:
                run.abandon()
            del self.runs[run_id]

    def reply(self, msg) -> None:
        try:
            self.back.send_bytes(wire.encode(msg))
        except OSError:
            pass  # the probe is gone; nothing to tell


def _write_sidecar(run: RunFile, result: dict) -> None:
    """The small JSON summary beside the log, when the run asked for one; written on close and on death."""
    if not run.sidecar:
        return
    summary = {**run.sidecar.get("summary", {}), **result}
    try:
        atomic_write(run.sidecar["summary_path"], msgspec.json.format(msgspec.json.encode(summary), indent=2))
    except (OSError, TypeError, KeyError, msgspec.EncodeError):
        pass  # the log itself is complete; the summary is a convenience


def _lower_priority(nice: int) -> None:
    """Yield the cores to the probe when both want them: the writer only has to keep up on average."""
    if nice > 0:
        try:
            os.nice(nice)
        except OSError:
            pass  # not allowed here; the writer runs at the probe's priority


def main(argv: list[str]) -> int:
    if hasattr(signal, "SIGXFSZ"):  # past a file-size limit, fail the write (EFBIG) instead of dying
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    data_fd, back_fd, pool_fd, capacity = (int(a) for a in argv[:4])
    options = wire.WriterOptions.from_argument(argv[4])
    from asynclog._staging import StagingPool

    data = Connection(data_fd, writable=False)
    back = Connection(back_fd, readable=False)
    pool = StagingPool(capacity, fd=pool_fd)
    _lower_priority(options.nice)
    writer = Writer(data, back, pool, options)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, writer.on_signal)
    first = options.first_open  # the run whose start() spawned us: ours from our first instant
    try:
        back.send_bytes(wire.encode(wire.Ready(os.getpid(), socket.gethostname(), wire.WIRE_VERSION)))
    except OSError:  # the probe died before it heard from us: close the run it had started, marked so
        writer.take_first(first)
        writer.finish_all(_ON_PROBE_DEATH)
        return 0
    writer.take_first(first)  # after Ready: its answer, if any, must not pass for the handshake
    try:
        writer.serve()
    except BaseException:
        writer.reply(wire.Failed(0, 0, traceback.format_exc()))
        writer.finish_all(_ON_PROBE_DEATH)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
