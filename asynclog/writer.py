"""The writer process: takes messages from the probe, builds frames, writes them, and outlives the probe.

Started by ``Channel`` as ``python -m asynclog.writer DATA_FD BACK_FD POOL_FD POOL_CAPACITY OPTIONS_HEX``.
It imports no torch, so it is up in a fraction of a second. Its life:

1. Map the staging pool, answer READY (the handshake), ignore SIGINT (Ctrl-C belongs to the probe, which
   closes its runs and then asks this process to stop).
2. Serve: OPEN a run file and write its header frame; turn RECORDS and STAGED messages into frames (built on
   ``compress_threads`` threads, written in the order they arrived) and release their staging space; CLOSE
   writes the footer and trailer and fsyncs; SHUTDOWN ends the loop.
3. If the data pipe reaches end-of-file without SHUTDOWN, the probe is gone (crash, ``kill -9``): write what
   was handed over, close every open run with a footer marked incomplete, and exit. No orphan remains.

A failure writing one run (a full disk) is reported back as ERROR for that run; the writer keeps serving
the others and keeps releasing staging space so the probe never blocks on a run that cannot be written.
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

from . import format as fmt
from .channel import Op
from .filters import Codec
from .staging import StagingPool

encode = msgspec.msgpack.Encoder().encode
decode = msgspec.msgpack.Decoder().decode

_RAW = Codec("raw")
_INCOMPLETE_ON_DEATH = "the probe process ended without closing the run"


class RunFile:
    """One open log file: appends frames, keeps the footer index and the byte counts."""

    def __init__(self, path: str, header: dict, sidecar: dict | None, codec: Codec):
        self.path = path
        self.codec = codec
        self.sidecar = sidecar
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.offset = 0
        self.failed: str | None = None
        self.records: list[int] = []
        self.tensors: dict[str, dict[int, list[int]]] = {}
        self.streams: dict[str, list[int]] = {}
        self.stats = {"frames": 0, "records": 0, "bytes_raw": 0, "bytes_on_disk": 0}
        self.last_sync = time.monotonic()
        self.dirty = False
        self._write([fmt.PREAMBLE])
        self.append(fmt.FrameKind.HEADER, _build(_RAW, fmt.FrameKind.HEADER, header, b""), header)

    def append(self, kind: fmt.FrameKind, parts: list, meta: dict) -> None:
        """Write one built frame and index it."""
        offset = self.offset
        self._write(parts)
        self.stats["frames"] += 1
        self.stats["bytes_raw"] += meta.get("_raw_len", 0)
        if kind == fmt.FrameKind.RECORDS:
            self.records.append(offset)
            self.stats["records"] += meta["count"]
        elif kind == fmt.FrameKind.TENSOR:
            self.tensors.setdefault(meta["name"], {}).setdefault(meta["tid"], []).append(offset)
        elif kind == fmt.FrameKind.CHUNK:
            self.streams.setdefault(meta["stream"], []).append(offset)

    def _write(self, parts: list) -> None:
        views = [memoryview(p).cast("B") for p in parts]
        while views:
            n = os.writev(self.fd, views)
            self.offset += n
            while views and n >= len(views[0]):
                n -= len(views.pop(0))
            if n:
                views[0] = views[0][n:]
        self.dirty = True

    def sync(self) -> None:
        if self.dirty:
            os.fsync(self.fd)
            self.dirty = False
        self.last_sync = time.monotonic()

    def finish(self, complete: bool, reason: str | None, probe_stats: dict) -> dict:
        """Write footer and trailer, fsync, close; return the stats the footer holds."""
        self.stats["bytes_on_disk"] = self.offset
        stats = {**probe_stats, **self.stats}
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
        self._write(_build(_RAW, fmt.FrameKind.FOOTER, footer, b"") + [fmt.trailer(footer_offset)])
        stats["bytes_on_disk"] = self.offset
        self.sync()
        os.close(self.fd)
        return {"complete": complete, "reason": reason, "stats": stats}

    def abandon(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def _build(codec: Codec, kind: fmt.FrameKind, meta: dict, body, itemsize: int = 0, shuffle_ok: bool = False) -> list:
    """Filter the body and frame it: [prefix (header + meta), stored body, payload checksum]."""
    filt, shuffle_size, stored = codec.encode(body, itemsize, shuffle_ok)
    meta_bytes = fmt.encode_meta(meta)
    prefix = fmt.frame_prefix(kind, filt, shuffle_size, meta_bytes, len(stored), len(body))
    return [prefix, stored, fmt.frame_suffix(meta_bytes, stored)]


class _InOrder:
    """Frames built on worker threads and written in the order they were submitted."""

    def __init__(self, threads: int):
        self.executor = ThreadPoolExecutor(threads, "asynclog-compress") if threads > 1 else None
        self.limit = 2 * threads
        self.pending: deque[tuple[Future, Callable[[list], None]]] = deque()

    def submit(self, build: Callable[[], list], done: Callable[[list], None]) -> None:
        if self.executor is None:
            done(build())
            return
        self.pending.append((self.executor.submit(build), done))
        while len(self.pending) > self.limit:
            self._complete_one()

    def flush(self) -> None:
        while self.pending:
            self._complete_one()

    def _complete_one(self) -> None:
        future, done = self.pending.popleft()
        done(future.result())


class Writer:
    """The serve loop and the handlers for each ``Op``."""

    def __init__(self, data: Connection, back: Connection, pool: StagingPool, options: dict):
        self.data, self.back, self.pool = data, back, pool
        threads = options.get("compress_threads", 0) or max(1, min(4, (os.cpu_count() or 2) - 1))
        self.frames = _InOrder(threads)
        self.fsync_interval = options.get("fsync_interval_s", 1.0)
        self.runs: dict[int, RunFile] = {}

    def serve(self) -> None:
        handlers = {Op.OPEN: self.on_open, Op.RECORDS: self.on_records, Op.STAGED: self.on_staged,
                    Op.CLOSE: self.on_close, Op.SYNC: self.on_sync}
        while True:
            if not self.data.poll(self._idle_timeout()):
                self.on_idle()
                continue
            try:
                message = decode(self.data.recv_bytes())
            except (EOFError, OSError):
                self.on_probe_death()
                return
            if message[0] == Op.SHUTDOWN:
                self.frames.flush()
                self._finish_all(_INCOMPLETE_ON_DEATH.replace("ended", "shut the writer down"))
                return
            handlers[message[0]](*message[1:])
            self._sync_due()

    def _idle_timeout(self) -> float | None:
        if self.frames.pending:
            return 0.0
        if any(run.dirty for run in self.runs.values()) and self.fsync_interval > 0:
            return self.fsync_interval
        return None

    def on_idle(self) -> None:
        self.frames.flush()
        self._sync_due()

    def _sync_due(self) -> None:
        """fsync every run whose interval has passed; also called while busy, so a stream of frames is synced."""
        now = time.monotonic()
        for run_id, run in list(self.runs.items()):
            if run.dirty and self.fsync_interval > 0 and now - run.last_sync >= self.fsync_interval:
                self._guard(run_id, run.sync)

    # --- handlers ---------------------------------------------------------------------------------------
    def on_open(self, run_id: int, path: str, header: dict, sidecar: dict | None, options: dict) -> None:
        try:
            codec = Codec(options["compression"], options["zstd_level"], options["min_ratio"])
            self.runs[run_id] = RunFile(path, header, sidecar, codec)
        except OSError as exc:
            self.reply(Op.ERROR, run_id, f"cannot create {path}: {exc}")
            return
        self.reply(Op.OPENED, run_id, None)

    def on_records(self, run_id: int, count: int, body: bytes, tensors: list = ()) -> None:
        if count:
            self._submit(run_id, fmt.FrameKind.RECORDS, {"count": count, "_raw_len": len(body)}, body, None)
        for meta, data, itemsize, shuffle_ok in tensors:  # small tensors that rode along
            meta["_raw_len"] = len(data)
            self._submit(run_id, fmt.FrameKind.TENSOR, meta, data, None, itemsize, shuffle_ok)

    def on_staged(self, run_id: int, kind: int, meta: dict, offset: int, nbytes: int, mark: int,
                  itemsize: int, shuffle_ok: bool) -> None:
        meta["_raw_len"] = nbytes
        self._submit(run_id, fmt.FrameKind(kind), meta, self.pool.view(offset, nbytes), mark, itemsize, shuffle_ok)

    def on_sync(self, run_id: int) -> None:
        self.frames.flush()
        run = self.runs.get(run_id)
        if run is not None and not run.failed:
            self._guard(run_id, run.sync)
        if run is None or run.failed:
            self.reply(Op.ERROR, run_id, run.failed if run else f"run {run_id} is not open")
        else:
            self.reply(Op.SYNCED, run_id, None)

    def on_close(self, run_id: int, footer: dict) -> None:
        self.frames.flush()
        run = self.runs.pop(run_id, None)
        if run is None:
            self.reply(Op.ERROR, run_id, f"run {run_id} is not open")
            return
        if run.failed:
            run.abandon()
            self.reply(Op.ERROR, run_id, run.failed)
            return
        try:
            result = run.finish(footer.get("complete", True), footer.get("reason"), footer.get("stats", {}))
        except OSError as exc:
            run.abandon()
            self.reply(Op.ERROR, run_id, f"cannot finish {run.path}: {exc}")
            return
        _write_sidecar(run, result)
        self.reply(Op.CLOSED, run_id, result)

    def on_probe_death(self) -> None:
        self.frames.flush()
        self._finish_all(_INCOMPLETE_ON_DEATH)

    # --- helpers ----------------------------------------------------------------------------------------
    def _submit(self, run_id: int, kind: fmt.FrameKind, meta: dict, body, mark: int | None,
                itemsize: int = 0, shuffle_ok: bool = False) -> None:
        frame_meta = {k: v for k, v in meta.items() if not k.startswith("_")}
        codec = self.runs[run_id].codec if run_id in self.runs else _RAW

        def build() -> list:
            return _build(codec, kind, frame_meta, body, itemsize, shuffle_ok)

        def done(parts: list) -> None:
            run = self.runs.get(run_id)
            if run is not None and not run.failed:
                self._guard(run_id, lambda: run.append(kind, parts, meta))
            if mark is not None:
                self.pool.release(mark)

        self.frames.submit(build, done)

    def _guard(self, run_id: int, action: Callable[[], None]) -> None:
        """Run a file operation; on OSError mark the run failed and tell the probe, once."""
        try:
            action()
        except OSError as exc:
            run = self.runs[run_id]
            if not run.failed:
                run.failed = f"writing {run.path} failed: {exc}"
                self.reply(Op.ERROR, run_id, run.failed)

    def _finish_all(self, reason: str) -> None:
        for run_id, run in list(self.runs.items()):
            try:
                result = run.finish(False, reason, {})
                _write_sidecar(run, result)
            except OSError:
                run.abandon()
            del self.runs[run_id]

    def reply(self, op: Op, run_id: int | None, value) -> None:
        try:
            self.back.send_bytes(encode([op, run_id, value]))
        except OSError:
            pass  # the probe is gone; nothing to tell


def _write_sidecar(run: RunFile, result: dict) -> None:
    """The small JSON summary beside the log, when the run asked for one; written on close and on death."""
    if not run.sidecar:
        return
    summary = {**run.sidecar.get("summary", {}), **result}
    path = run.sidecar["summary_path"]
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(msgspec.json.format(msgspec.json.encode(summary), indent=2))
        os.replace(tmp, path)
    except OSError:
        pass


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGXFSZ"):  # past a file-size limit, fail the write (EFBIG) instead of dying
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    data_fd, back_fd, pool_fd, capacity = (int(a) for a in argv[:4])
    options = decode(bytes.fromhex(argv[4])) if len(argv) > 4 else {}
    data = Connection(data_fd, writable=False)
    back = Connection(back_fd, readable=False)
    pool = StagingPool(capacity, fd=pool_fd)
    back.send_bytes(encode([Op.READY, os.getpid(), socket.gethostname()]))
    writer = Writer(data, back, pool, options)
    try:
        writer.serve()
    except BaseException:
        try:
            back.send_bytes(encode([Op.ERROR, None, traceback.format_exc()]))
        except OSError:
            pass
        writer.on_probe_death()
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
