"""The hand-over between the probe's process and the writer process, probe side.

A ``Channel`` spawns one writer process, waits for its handshake, and then owns two pipes:

- data  (probe -> writer): msgpack messages (``Op``) sent by one sender thread from a bounded queue, so
  the probe's threads never make a syscall per record and a full queue is where the policy applies;
- back  (writer -> probe): acknowledgements and errors, read by one receiver thread. Its end-of-file is
  how a dead writer is noticed: at once, not at the next write.

Bulk bytes (tensor pieces, stream chunks) do not travel through the pipe: they sit in the staging pool
and the message carries only where. The writer is started as ``python -m asynclog.writer`` rather than
with multiprocessing, so it never re-imports the probe's ``__main__`` or torch under spawn, and a fork of
the probe does not copy it.
"""

from __future__ import annotations

import enum
import os
import collections
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

import msgspec

from .errors import QueueFullError, WriterError
from .staging import StagingPool

__all__ = ["Op", "Channel"]

_HANDSHAKE_TIMEOUT_S = 30.0
_POLL_S = 0.05
_SENDER_POLL_S = 0.005  # the longest a small hand-over waits for the sender

encode = msgspec.msgpack.Encoder().encode
decode = msgspec.msgpack.Decoder().decode


class Op(enum.IntEnum):
    """Messages, first element of every msgpack array on either pipe."""

    # probe -> writer
    OPEN = 1  # [OPEN, run_id, path, header_meta, sidecar]
    RECORDS = 2  # [RECORDS, run_id, count, body, [[tensor_meta, bytes, itemsize, shuffle_ok], ...]]
    STAGED = 3  # [STAGED, run_id, frame_kind, meta, offset, nbytes, release_mark, itemsize, shuffle_ok]
    CLOSE = 4  # [CLOSE, run_id, footer_meta]
    SHUTDOWN = 5  # [SHUTDOWN]
    SYNC = 6  # [SYNC, run_id]: answered once everything before it is written and fsynced
    # writer -> probe
    READY = 10  # [READY, pid]
    OPENED = 11  # [OPENED, run_id]
    CLOSED = 12  # [CLOSED, run_id, footer_stats]
    ERROR = 13  # [ERROR, run_id or None, message]
    SYNCED = 14  # [SYNCED, run_id, None]


class _Reply:
    """A one-shot answer from the writer, waited on with the writer's death in view."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value = None
        self.error: str | None = None


class Channel:
    """One writer process and the pipes and pool it shares with this process. Thread-safe."""

    def __init__(self, staging_bytes: int, queue_batches: int, flush_interval_s: float, writer_options: dict):
        self.pool = StagingPool(staging_bytes)
        self._prefault = self.pool.prefault()
        # The outbox: a deque (append and popleft are atomic) bounded by ``queue_batches``. A producer wakes
        # the sender only when it may be asleep, so a hand-over costs an append, not a lock and a notify.
        self._outbox: collections.deque[bytes | None] = collections.deque()
        self._limit = queue_batches
        self._wake = threading.Event()
        self._space = threading.Condition()
        self._waiting_for_space = 0
        self._replies: dict[tuple[int, int], _Reply] = {}
        self._run_errors: dict[int, str] = {}
        self._flushers: dict[int, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self.flush_interval_s = flush_interval_s
        self.error: WriterError | None = None
        self.high_water = 0
        self.owner_pid = os.getpid()
        self._closed = False
        self._spawn(writer_options)
        self._sender = threading.Thread(target=self._send_loop, name="asynclog-sender", daemon=True)
        self._receiver = threading.Thread(target=self._receive_loop, name="asynclog-receiver", daemon=True)
        self._sender.start()
        self._receiver.start()

    # --- start-up -------------------------------------------------------------------------------------------
    def _spawn(self, writer_options: dict) -> None:
        data_r, data_w = os.pipe()
        back_r, back_w = os.pipe()
        args = [sys.executable, "-m", "asynclog.writer", str(data_r), str(back_w), str(self.pool.fd),
                str(self.pool.capacity), encode(writer_options).hex()]
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        self.process = subprocess.Popen(args, pass_fds=(data_r, back_w, self.pool.fd), env=env,
                                        stdin=subprocess.DEVNULL)
        # Close the child's ends here, so the child's death shows as end-of-file on ``back`` at once.
        os.close(data_r)
        os.close(back_w)
        self._data = Connection(data_w, readable=False)
        self._back = Connection(back_r, writable=False)
        self._handshake()

    def _handshake(self) -> None:
        deadline = time.monotonic() + _HANDSHAKE_TIMEOUT_S
        while not self._back.poll(_POLL_S):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self._kill()
                raise WriterError(f"writer process failed to start (exit code {self.process.returncode})",
                                  self.process.returncode)
        try:
            msg = decode(self._back.recv_bytes())
        except (EOFError, OSError):
            msg = None
        if not msg or msg[0] != Op.READY:
            self._kill()
            raise WriterError(f"writer process failed its handshake (exit code {self.process.returncode})",
                              self.process.returncode)

    # --- probe threads call these ---------------------------------------------------------------------------
    def check(self) -> None:
        """Raise the writer's failure, if any, in the caller's thread."""
        if self.error is not None:
            raise self.error

    def run_error(self, run_id: int) -> str | None:
        return self._run_errors.get(run_id)

    def put(self, message: bytes, policy: str, wake: bool = True) -> bool:
        """Hand a message to the sender; return False if it was dropped under the ``drop`` policy.

        Waking the sender thread costs the caller tens of microseconds (a thread switch under the GIL), so
        small hand-overs pass ``wake=False`` and the sender picks them up within ``_SENDER_POLL_S``.
        """
        self.check()
        box = self._outbox
        if len(box) >= self._limit:
            if policy == "drop":
                return False
            if policy == "error":
                raise QueueFullError("asynclog queue is full (policy 'error')")
            self._wait_for_space()
        box.append(message)
        if (wake or len(box) >= self._limit >> 1) and not self._wake.is_set():
            self._wake.set()
        if len(box) > self.high_water:
            self.high_water = len(box)
        return True

    def kick(self) -> None:
        """Wake the sender now (a producer is about to wait for space)."""
        self._wake.set()

    def _wait_for_space(self) -> None:
        self.kick()
        with self._space:
            self._waiting_for_space += 1
            try:
                while len(self._outbox) >= self._limit:
                    self._space.wait(_POLL_S)
                    self.check()
            finally:
                self._waiting_for_space -= 1

    def put_nowait(self, message: bytes) -> bool:
        """Hand a message over only if there is room now (used by the sender's own flush)."""
        if len(self._outbox) >= self._limit:
            return False
        self._outbox.append(message)
        self._wake.set()
        return True

    def request(self, key: tuple[int, int], message: bytes, timeout: float | None = None):
        """Send a message that the writer answers (OPEN, CLOSE, SYNC) and wait for the answer."""
        reply = _Reply()
        with self._lock:
            self._replies[key] = reply
        self.put(message, "block")
        deadline = None if timeout is None else time.monotonic() + timeout
        while not reply.event.wait(_POLL_S):
            self.check()
            if deadline is not None and time.monotonic() > deadline:
                raise WriterError(f"writer did not answer within {timeout} s")
        if reply.error is not None:
            raise WriterError(reply.error)
        return reply.value

    def add_flusher(self, run_id: int, flush: Callable[[], None]) -> None:
        """Register a callback the sender calls every flush interval (a run's partial batch)."""
        with self._lock:
            self._flushers[run_id] = flush

    def remove_flusher(self, run_id: int) -> None:
        with self._lock:
            self._flushers.pop(run_id, None)

    def wait_prefault(self) -> None:
        self._prefault.join()

    # --- background threads ---------------------------------------------------------------------------------
    def _send_loop(self) -> None:
        box, wake = self._outbox, self._wake
        next_flush = time.monotonic() + self.flush_interval_s
        while True:
            wake.wait(min(_SENDER_POLL_S, max(0.0, next_flush - time.monotonic())))
            wake.clear()  # before draining: a message appended from here on sets it again
            while box:
                message = box.popleft()
                if message is None:
                    return
                try:
                    self._data.send_bytes(message)
                except OSError as exc:
                    # Producers blocked on a full outbox poll ``error`` and wake up.
                    self._fail(f"cannot send to the writer process: {exc}")
                    return
                if self._waiting_for_space:
                    with self._space:
                        self._space.notify_all()
            if time.monotonic() >= next_flush:
                with self._lock:
                    flushers = list(self._flushers.values())
                for flush in flushers:
                    flush()
                next_flush = time.monotonic() + self.flush_interval_s

    def _receive_loop(self) -> None:
        while True:
            try:
                msg = decode(self._back.recv_bytes())
            except (EOFError, OSError):
                break
            op = msg[0]
            if op == Op.ERROR:
                run_id, text = msg[1], msg[2]
                if run_id is None:
                    self._fail(f"writer process error: {text}")
                    continue
                self._run_errors[run_id] = text
            key = (op, msg[1])
            with self._lock:
                reply = self._replies.pop(key, None)
            if reply is None and op == Op.ERROR:
                # An error on a run with an OPEN or CLOSE in flight answers that request.
                with self._lock:
                    reply = next(filter(None, (self._replies.pop((wait, msg[1]), None)
                                               for wait in (Op.OPENED, Op.CLOSED, Op.SYNCED))), None)
            if reply is not None:
                if op == Op.ERROR:
                    reply.error = msg[2]
                else:
                    reply.value = msg[2] if len(msg) > 2 else None
                reply.event.set()
        code = self._reap()
        if not self._closed:
            self._fail(f"writer process died (exit code {code})", code)

    def _reap(self) -> int | None:
        try:
            return self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    def _fail(self, message: str, exitcode: int | None = None) -> None:
        if self.error is None:
            self.error = WriterError(message, exitcode if exitcode is not None else self.process.poll())

    # --- shutdown -------------------------------------------------------------------------------------------
    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop the writer after it has written everything handed to it. Safe to call twice."""
        if self._closed or os.getpid() != self.owner_pid:
            return
        if self.error is None:
            try:
                self.put(encode([Op.SHUTDOWN]), "block")
            except WriterError:
                pass
        self._closed = True
        self._queue_put_final()
        self._sender.join(timeout)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill()
        self._receiver.join(timeout)
        self._data.close()
        self._back.close()
        self._prefault.join()
        self.pool.close()

    def _queue_put_final(self) -> None:
        self._outbox.append(None)  # past the limit on purpose: the sentinel must go in
        self._wake.set()

    def _kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
