"""The hand-over between the probe's process and the writer process, probe side.

A ``Channel`` spawns one writer process and owns two pipes:

- data  (probe -> writer): ``wire`` messages sent by one sender thread from a bounded outbox, so the
  probe's threads never make a syscall per record and a full outbox is where the policy applies;
- back  (writer -> probe): answers and failures, read by one receiver thread. Its end-of-file is how a
  dead writer is noticed: at once, not at the next write.

The constructor does not wait for the writer to start: the receiver thread waits for its handshake and the
sender sends nothing before it, so messages handed over meanwhile wait in the outbox, and a writer that
cannot start fails the channel like one that died.

Bulk bytes (tensor pieces, stream chunks) do not travel through the pipe: they sit in the staging pool
and the message carries only where. The writer process is started, and its handshake read, by ``_spawn``.

Failures are never silent and never hang a caller:
- a run's write failure (``Failed`` with that run) reaches that run through its ``on_fault`` callback, so
  its next call raises; other runs go on;
- the writer's death, or any exception in the sender or receiver thread, fails the whole channel: every
  attached run is faulted, every waiting caller wakes with the ``WriterError``, and the pipes and the pool
  mapping are released at once;
- every wait has a deadline (``timeout_s``) and then raises a ``WriterError`` naming what it waited for.
"""

from __future__ import annotations

import collections
import itertools
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable

from asynclog import _wire as wire
from asynclog._spawn import handshake, kill, spawn_writer
from asynclog._staging import StagingPool
from asynclog.errors import QueueFullError, WriterError

__all__ = ["Channel"]

_POLL_S = 0.05
_SENDER_POLL_S = 0.005  # the longest a small hand-over waits for the sender


class _Reply:
    """A one-shot answer from the writer, waited on with the writer's death in view."""

    __slots__ = ("event", "value", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value = None
        self.error: WriterError | None = None


class _Attached:
    """What the channel knows of one run: how to flush its partial batch and how to tell it of a fault."""

    __slots__ = ("flush_if_due", "on_fault")

    def __init__(self, flush_if_due: Callable[[], None], on_fault: Callable[[WriterError], None]):
        self.flush_if_due, self.on_fault = flush_if_due, on_fault


class Channel:
    """One writer process and the pipes and pool it shares with this process. Thread-safe."""

    def __init__(self, staging_bytes: int, queue_batches: int, flush_interval_s: float,
                 writer_options: wire.WriterOptions, timeout_s: float):
        """``writer_options.first_open``, an encoded ``wire.Open``, is handed to the writer on its command line: it
        takes that run over first thing, so a probe killed before the handshake still gets its run closed, marked
        so."""
        self.pool = StagingPool(staging_bytes)
        # The outbox: a deque (append and popleft are atomic) bounded by ``queue_batches``. A producer wakes
        # the sender only when it may be asleep, so a hand-over costs an append, not a lock and a notify.
        self._outbox: collections.deque[bytes | None] = collections.deque()
        self._limit = queue_batches
        self._wake = threading.Event()
        self._space = threading.Condition()
        self._waiting_for_space = 0
        self._asks = itertools.count(1)
        self._replies: dict[int, _Reply] = {}
        self._runs: dict[int, _Attached] = {}
        self._early_faults: dict[int, WriterError] = {}  # a run failed before it attached (its Open failed)
        self._last_attached = 0  # run ids grow, so a fault for a larger one is for a run not attached yet
        self._release_hooks: list[Callable[[], None]] = []
        self._poll_hooks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self.flush_interval_s = flush_interval_s
        self.timeout_s = timeout_s
        self.error: WriterError | None = None
        self.high_water = 0
        self.owner_pid = os.getpid()
        self._closed = False
        self._released = False
        self._ready = threading.Event()  # the writer answered its handshake
        self._spawned = threading.Event()  # the writer process exists (or failed to: then ``error`` is set)
        self._sender = threading.Thread(target=self._guarded, args=(self._send_loop, "sender"),
                                        name="asynclog-sender", daemon=True)
        self._receiver = threading.Thread(target=self._guarded, args=(self._receive_loop, "receiver"),
                                          name="asynclog-receiver", daemon=True)
        # Before the writer boots: starting a thread waits for it to run, which takes well under a millisecond
        # on an idle CPU and several while a new interpreter competes for the cores.
        self._sender.start()
        self._receiver.start()
        try:
            self.process, self._data, self._back = spawn_writer(self.pool, writer_options)
        except BaseException as exc:
            self.error = WriterError(f"cannot start the writer process: {exc!r}")  # the threads end on it
            self.pool.close()
            raise
        finally:
            self._spawned.set()

    # --- start-up -------------------------------------------------------------------------------------------
    # --- probe threads call these ---------------------------------------------------------------------------
    def check(self) -> None:
        """Raise the writer's failure, if any, in the caller's thread."""
        if self.error is not None:
            self.error.reported = True
            raise self.error

    def full(self) -> bool:
        return len(self._outbox) >= self._limit

    def attach(self, run_id: int, flush_if_due: Callable[[], None], on_fault: Callable[[WriterError], None]) -> None:
        """Register a run: ``flush_if_due`` is called by the sender every flush interval, ``on_fault`` when the
        writer fails that run or dies."""
        with self._lock:
            self._runs[run_id] = _Attached(flush_if_due, on_fault)
            self._last_attached = max(self._last_attached, run_id)
            early = self._early_faults.pop(run_id, None)
        if early is not None:
            on_fault(early)
        if self.error is not None:
            on_fault(self.error)

    def detach(self, run_id: int) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def on_release(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` (under no lock of ours) before the pool is unmapped, when the channel dies or shuts down."""
        self._release_hooks.append(hook)

    def on_poll(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` on the sender thread each time it wakes (at least every ``_SENDER_POLL_S``); it must
        never block, and messages it hands over go through ``put_nowait``."""
        self._poll_hooks.append(hook)

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

    def put_nowait(self, message: bytes) -> bool:
        """Hand a message over only if there is room now (used by the sender's own flush)."""
        if len(self._outbox) >= self._limit or self.error is not None:
            return False
        self._outbox.append(message)
        self._wake.set()
        return True

    def kick(self) -> None:
        """Wake the sender now (a producer is about to wait for space)."""
        self._wake.set()

    def _wait_for_space(self) -> None:
        self.kick()
        deadline = time.monotonic() + self.timeout_s
        with self._space:
            self._waiting_for_space += 1
            try:
                while len(self._outbox) >= self._limit:
                    self._space.wait(_POLL_S)
                    self.check()
                    if time.monotonic() > deadline:
                        raise WriterError(f"the writer took nothing from the full queue for {self.timeout_s} s "
                                          f"(pid {self.process.pid}: stopped or stuck?)")
            finally:
                self._waiting_for_space -= 1

    def new_ask(self) -> int:
        return next(self._asks)

    def request(self, ask: int, message: bytes, what: str, timeout: float | None = None):
        """Send a message that the writer answers (Open, Sync, Close) and wait for the answer.

        ``ask`` must be the id the message carries (``new_ask``); ``what`` names the wait in a timeout error.
        """
        reply = _Reply()
        with self._lock:
            self._replies[ask] = reply
        try:
            self.put(message, "block")
            timeout = self.timeout_s if timeout is None else timeout
            deadline = time.monotonic() + timeout
            while not reply.event.wait(_POLL_S):
                self.check()
                if time.monotonic() > deadline:
                    raise WriterError(f"the writer did not finish {what} within {timeout} s "
                                      f"(pid {self.process.pid}: stopped, stuck or very far behind?)")
        finally:
            with self._lock:
                self._replies.pop(ask, None)
        if reply.error is not None:
            raise reply.error
        return reply.value

    # --- background threads ---------------------------------------------------------------------------------
    def _guarded(self, loop: Callable[[], None], role: str) -> None:
        """Run a thread's loop; whatever kills it fails the channel, so callers raise instead of hanging."""
        try:
            loop()
        except BaseException:  # noqa: BLE001 - the failure is stored and re-raised in the probe's threads
            self._fail(f"asynclog {role} thread failed:\n{traceback.format_exc()}")
            self._release()

    def _send_loop(self) -> None:
        while not self._ready.wait(_POLL_S):  # nothing goes to a writer that has not shown it is ours
            if self.error is not None:
                return
        box, wake = self._outbox, self._wake
        next_flush = time.monotonic() + self.flush_interval_s
        while True:
            wake.wait(min(_SENDER_POLL_S, max(0.0, next_flush - time.monotonic())))
            wake.clear()  # before draining: a message appended from here on sets it again
            for hook in self._poll_hooks:
                hook()
            while box:
                message = box.popleft()
                if message is None:
                    return
                try:
                    self._data.send_bytes(message)
                except (OSError, ValueError) as exc:
                    # The writer is gone; the receiver sees its end-of-file and reports the exit code.
                    self._fail(f"cannot send to the writer process: {exc}", self._reap())
                    return
                if self._waiting_for_space:
                    with self._space:
                        self._space.notify_all()
            if time.monotonic() >= next_flush:
                self._flush_runs()
                next_flush = time.monotonic() + self.flush_interval_s

    def _flush_runs(self) -> None:
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            try:
                run.flush_if_due()
            except Exception as exc:  # noqa: BLE001 - one run's failure is that run's, reported on its next call
                run.on_fault(WriterError(f"handing a partial batch to the writer failed: {exc!r}"))

    def _receive_loop(self) -> None:
        self._spawned.wait()
        if self.error is not None:
            return  # no writer process was started
        try:
            handshake(self.process, self._back)
        except WriterError as exc:
            self._fail(str(exc), exc.exitcode)
            self._release()
            return
        self._ready.set()
        while True:
            try:
                data = self._back.recv_bytes()
            except (EOFError, OSError):
                break
            self._on_message(wire.writer_decoder.decode(data))
        code = self._reap()
        if not self._closed:
            self._fail(f"writer process died (exit code {code})", code)
        self._release()

    def _on_message(self, msg) -> None:
        if isinstance(msg, wire.Failed):
            error = WriterError(msg.message, errno=msg.errno)
            if msg.run == 0:
                self._fail(f"writer process error: {msg.message}")
            else:
                with self._lock:
                    run = self._runs.get(msg.run)
                    if run is None and msg.run > self._last_attached:
                        self._early_faults[msg.run] = error
                if run is not None:
                    run.on_fault(error)
            self._answer(msg.ask, None, error)
        elif isinstance(msg, wire.Done):
            self._answer(msg.ask, msg.value, None)

    def _answer(self, ask: int, value, error: WriterError | None) -> None:
        with self._lock:
            reply = self._replies.pop(ask, None)
        if reply is not None:
            reply.value, reply.error = value, error
            reply.event.set()

    def _reap(self) -> int | None:
        try:
            return self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    def _fail(self, message: str, exitcode: int | None = None) -> None:
        if self.error is not None:
            return
        self.error = WriterError(message, exitcode if exitcode is not None else self.process.poll())
        with self._lock:
            runs = list(self._runs.values())
            replies = list(self._replies.values())
        for run in runs:
            run.on_fault(self.error)
        for reply in replies:
            reply.error = self.error
            reply.event.set()
        with self._space:
            self._space.notify_all()

    # --- shutdown -------------------------------------------------------------------------------------------
    def shutdown(self, timeout: float | None = None) -> None:
        """Stop the writer after it has written everything handed to it. Safe to call twice."""
        if self._closed or os.getpid() != self.owner_pid:
            return
        timeout = self.timeout_s if timeout is None else timeout
        if self.error is None:
            try:
                self.put(wire.encode(wire.Shutdown()), "block")
            except WriterError:
                pass
        self._closed = True
        self._outbox.append(None)  # past the limit on purpose: the sentinel must go in
        self._wake.set()
        self._sender.join(timeout)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"asynclog: the writer process (pid {self.process.pid}) did not finish within {timeout} s; "
                  f"killing it (its open logs are readable up to their last whole frame)", file=sys.stderr)
            kill(self.process)
        self._receiver.join(timeout)
        self._release()

    def _release(self) -> None:
        """Close the pipes and unmap the pool: after the writer's death nothing of it stays in this process."""
        with self._lock:
            if self._released:
                return
            self._released = True
        if threading.current_thread() is not self._sender and self._sender.is_alive():
            self._outbox.append(None)
            self._wake.set()
            self._sender.join(1.0)
        for hook in self._release_hooks:
            try:
                hook()
            except Exception:  # noqa: BLE001 - releasing must go on
                pass
        for conn in (self._data, self._back):
            try:
                conn.close()
            except OSError:
                pass
        self.pool.close()

    def forget_in_child(self) -> None:
        """In a forked child: close this process's copies of the pipes, so the writer still sees the probe's
        death as end-of-file; the parent's threads and writer are not ours to touch."""
        self._closed = True
        for conn in (self._data, self._back):
            try:
                conn.close()
            except OSError:
                pass
