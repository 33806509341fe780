"""Probe processes for the fault suite, and the test side's tools to start, watch, and clean up after them.

Each probe is this module run as ``python -m faults.workload ROLE ARGS...``: a real process that imports
torch and asynclog, logs, and reports on stdout one line per milestone. The test side (``Probe``) reads
those lines on a thread, stamped with ``time.monotonic()`` (system-wide on Linux, so comparable with the
probe's own clock), and every wait it offers is bounded. ``reaper`` kills whatever a test left running:
probes, their process groups, the writers found with ``writer_of``, and forked children.

What a probe logs is derived from a seed (``tensor_value``, ``row_tokens``), so a test can rebuild every
value it expects to read back, bit for bit.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_DIR = os.path.dirname(TESTS_DIR)
STAGING_MAP = "asynclog-staging"
WRITER_MODULE = "asynclog._writer"


# --- values a probe logs and a test rebuilds -------------------------------------------------------------
def tensor_size(seed: int, index: int) -> int:
    """Bytes of tensor ``index``: log-uniform between 1 KiB and 32 MiB, a multiple of 4."""
    exponent = random.Random(seed * 1_000_003 + index).uniform(10, 25)
    return int(2**exponent) // 4 * 4


def tensor_value(seed: int, index: int):
    """Random bytes seen as float32 (NaN payloads, infinities, denormals included): only a bit-exact copy matches."""
    import torch

    generator = torch.Generator().manual_seed(seed * 7_919 + index)
    raw = torch.randint(0, 256, (tensor_size(seed, index),), dtype=torch.uint8, generator=generator)
    return raw.view(torch.float32)


def row_tokens(row_id: int):
    import torch

    return torch.arange(row_id % 50 + 1, dtype=torch.int64) + row_id * 1000


def padded_rows(first: int, count: int):
    """Rows ``first .. first+count-1`` as one padded [count, T] batch and their lengths, for ``stream.extend``."""
    import torch

    rows = [row_tokens(first + i) for i in range(count)]
    batch = torch.full((count, max(len(r) for r in rows)), -1, dtype=torch.int64)
    for i, row in enumerate(rows):
        batch[i, : len(row)] = row
    return batch, [len(r) for r in rows]


def same_bits(a, b) -> bool:
    import torch

    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


# --- the test side ---------------------------------------------------------------------------------------
class Probe:
    """A running probe process; its stdout lines arrive on a thread as (monotonic time, line)."""

    def __init__(self, role: str, *args: str, new_session: bool = False):
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [REPO_DIR, TESTS_DIR, os.environ.get("PYTHONPATH")])))
        self.process = subprocess.Popen([sys.executable, "-m", "faults.workload", role, *map(str, args)],
                                        cwd=REPO_DIR, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, start_new_session=new_session)
        self.pid = self.process.pid
        self.new_session = new_session
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[tuple[float, str]] = []
        self.stderr: list[str] = []
        self.last_read = time.monotonic()
        self.eof = threading.Event()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            self.last_read = time.monotonic()
            self.lines.put((self.last_read, line.rstrip("\n")))
        self.eof.set()

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr.append(line)

    def tail(self) -> str:
        return "".join(self.stderr[-30:])

    def expect(self, prefix: str, timeout: float = 30.0) -> tuple[float, list[str]]:
        """Wait (bounded) for the next line starting with ``prefix``; return its time and its words."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                at, line = self.lines.get(timeout=max(0.0, min(0.1, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    raise AssertionError(f"probe printed no {prefix!r} line within {timeout} s; "
                                         f"exit code {self.process.poll()}; stderr:\n{self.tail()}") from None
                continue
            self.seen.append((at, line))
            if line.startswith(prefix):
                return at, line.split()[1:]

    def drain(self, timeout: float = 5.0) -> list[str]:
        """After the probe is dead: every line it printed (its output is complete in the pipe already)."""
        deadline = time.monotonic() + timeout
        while not self.eof.is_set() and time.monotonic() < deadline and time.monotonic() - self.last_read < 0.5:
            time.sleep(0.05)
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return [line for _, line in self.seen]

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"probe did not exit within {timeout} s; stderr:\n{self.tail()}") from None

    def kill(self) -> None:
        if self.new_session:
            _ignore_gone(os.killpg, self.pid, signal.SIGKILL)
        _ignore_gone(os.kill, self.pid, signal.SIGKILL)
        self.process.wait(10)
        try:
            self.process.stdin.close()
        except OSError:
            pass
        # stdout and stderr are left to the reader threads: closing them while a read is pending would wait
        # for every process still holding the pipe's other end.


def _ignore_gone(kill, pid: int, sig: int) -> None:
    try:
        kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def writer_of(probe_pid: int, timeout: float = 10.0) -> int:
    """The pid of the writer process the probe started (its child running ``asynclog._writer``)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for child in psutil.Process(probe_pid).children():
                if any(WRITER_MODULE in part for part in child.cmdline()):
                    return child.pid
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    raise AssertionError(f"no writer child of probe {probe_pid} found within {timeout} s")


def gone(pid: int, timeout: float = 10.0) -> bool:
    """Wait (bounded) until ``pid`` has exited; a zombie waiting for its reaper counts as gone."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def maps_mention(pid: int, word: str) -> list[str]:
    """Lines of /proc/PID/maps naming ``word`` (a shared library, a memfd)."""
    with open(f"/proc/{pid}/maps") as f:
        return [line for line in f if word in line]


class Reaper:
    """Everything a test started; ``kill_all`` runs in teardown, whatever the test's outcome."""

    def __init__(self) -> None:
        self.probes: list[Probe] = []
        self.pids: list[int] = []

    def probe(self, role: str, *args, new_session: bool = False) -> Probe:
        probe = Probe(role, *args, new_session=new_session)
        self.probes.append(probe)
        return probe

    def writer(self, probe: Probe) -> int:
        pid = writer_of(probe.pid)
        self.pids.append(pid)
        return pid

    def track(self, pid: int) -> int:
        self.pids.append(pid)
        return pid

    def kill_all(self) -> None:
        for pid in self.pids:
            _ignore_gone(os.kill, pid, signal.SIGKILL)
        for probe in self.probes:
            probe.kill()
        for pid in self.pids:
            gone(pid, 5.0)


def _reaper():
    reaper = Reaper()
    try:
        yield reaper
    finally:
        reaper.kill_all()


if __name__ != "__main__":  # a probe process has no use for pytest, and starts faster without it
    import pytest

    reaper = pytest.fixture(_reaper, name="reaper")


def run_trials(trial, count: int, workers: int = 3) -> list:
    """Call ``trial(i)`` for i in range(count), a few at a time (each mostly waits on its own probe);
    re-raise the first failure, in trial order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(trial, i) for i in range(count)]
        return [future.result() for future in futures]


# --- the probes (run in their own process) -----------------------------------------------------------------
def say(*words) -> None:
    print(*words, flush=True)


def own_writer() -> int:
    return writer_of(os.getpid())


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def role_mixed(directory: str, seed: str, die_after: str) -> None:
    """Contract A: a mixed workload confirming after each ``run.flush()`` how much it had logged before it.

    With ``die_after`` > 0 it kills itself (SIGKILL) right after that many confirmations: the harshest moment.
    """
    import asynclog

    seed, die_after = int(seed), int(die_after)
    rng = random.Random(seed)
    run = asynclog.start(directory, name="mixed", config={"staging_bytes": 64 << 20})
    tokens = run.stream("tokens", chunk_rows=16)
    events = tensors = rows = flushes = 0
    say("ready", run._channel.process.pid)  # the writer's pid: the probe may be dead before a test could look
    while True:
        for _ in range(rng.randint(1, 40)):
            run.event("ev", seq=events)
            events += 1
        if rng.random() < 0.4:
            run.tensor(f"t{tensors}", tensor_value(seed, tensors))
            tensors += 1
        if rng.random() < 0.5:
            tokens.append(row_id=rows, tokens=row_tokens(rows))
            rows += 1
        else:
            count = rng.randint(1, 40)
            batch, lengths = padded_rows(rows, count)
            tokens.extend(row_id=list(range(rows, rows + count)), tokens=batch, lengths=lengths)
            rows += count
        if rng.random() < 0.3:
            run.flush()
            say("flushed", events, tensors, rows)
            flushes += 1
            if flushes == die_after:
                os.kill(os.getpid(), signal.SIGKILL)


def role_writer_victim(directory: str, mode: str) -> None:
    """Contract B: log until the writer is killed; report the error, then what leaked after shutdown()."""
    import asynclog
    import torch

    baseline = fd_count()
    config = {"staging_bytes": 4 << 20, "queue_batches": 8}
    run = asynclog.start(directory, name="victim", config=config)
    writer = own_writer()
    stream = run.stream("tokens", chunk_rows=4)
    say("ready", writer)
    try:
        if mode == "closing":
            os.kill(writer, signal.SIGSTOP)  # so close() is still waiting for the footer when the kill comes
            run.event("last", i=0)
            run.tensor("last", torch.ones(1 << 18))
            say("closing")
            run.close()
            say("closed")
        else:
            if mode == "blocked":
                os.kill(writer, signal.SIGSTOP)  # nothing is released: the 4 MiB pool fills and the probe blocks
                say("stopped")
            _log_until_error(run, stream)
    except asynclog.WriterError as exc:
        say("raised", exc.exitcode, json.dumps(str(exc)))
    say("after", json.dumps(_later_calls(run, stream)))
    with asynclog.start(directory, name="fresh", config=config) as fresh:
        fresh.event("ok")  # a fresh writer takes over; the dead one's pipes and pool must not linger
    asynclog.shutdown()
    say("leaks", baseline, fd_count(), len(maps_mention(os.getpid(), STAGING_MAP)))


def _log_until_error(run, stream) -> None:
    import torch

    big = torch.ones(1 << 17)  # 512 KiB: through the staging pool, not inline
    for i in range(1_000_000):
        run.event("step", i=i)
        if i % 3 == 0:
            run.tensor("big", big)
        if i % 5 == 0:
            stream.append(row_id=i, tokens=torch.full((1 << 14,), i))  # 4 rows: a 512 KiB chunk
        if i % 50 == 0:
            say("logged", i)


def _later_calls(run, stream) -> dict:
    """What each further call raises once the writer is gone (the test checks none of them hangs)."""
    import torch

    calls = {"event": lambda: run.event("again"), "tensor": lambda: run.tensor("again", torch.ones(1 << 17)),
             "append": lambda: stream.append(row_id=-1, tokens=torch.ones(1 << 14, dtype=torch.int64)),
             "close": run.close}
    outcome = {}
    for name, call in calls.items():
        try:
            call()
            outcome[name] = None
        except Exception as exc:  # noqa: BLE001 - the test judges which kinds are right
            outcome[name] = type(exc).__name__
    return outcome


def role_group_signal(directory: str, signame: str) -> None:
    """Contract C: a probe whose SIGTERM handler (or KeyboardInterrupt's finally) logs "bye" and closes."""
    import asynclog

    run = asynclog.start(directory, name="group")

    def close_run() -> None:
        run.event("bye")
        try:
            run.close()
            say("closed")
        except asynclog.AsyncLogError as exc:
            say("close-raised", json.dumps(repr(exc)))

    def on_term(signum, frame) -> None:
        close_run()
        sys.exit(0)

    if signame == "SIGTERM":
        signal.signal(signal.SIGTERM, on_term)
    try:
        for i in range(1_000_000):
            run.event("step", i=i)
            if i == 200:
                say("ready", own_writer())
            time.sleep(0.001)
    except KeyboardInterrupt:
        pass
    finally:
        if signame == "SIGINT":
            close_run()


def role_forker(directory: str) -> None:
    """Contract D: start a run, fork a child that only sleeps (keeping every inherited fd), log on."""
    import asynclog

    run = asynclog.start(directory, name="forked")
    run.event("before_fork")
    run.flush()
    child = os.fork()
    if child == 0:
        time.sleep(30)
        os._exit(0)
    say("forked", own_writer(), child)
    for i in range(1_000_000):
        run.event("step", i=i)
        time.sleep(0.001)


def role_fill_disk(full_dir: str, other_dir: str) -> None:
    """Contract E: log into a small filesystem until it is full; report when, and whether, the error came."""
    import asynclog
    import torch

    run = asynclog.start(full_dir, name="full", config={"compression": "raw"})
    other = asynclog.start(other_dir, name="other", config={"compression": "raw"})
    writer = own_writer()
    rows = run.stream("rows", chunk_rows=8)
    logged, report = _fill(run, other, rows, torch)
    say("outcome", json.dumps({**report, "logged": logged}))
    for i in range(10):
        other.event("after", i=i)
    other.close()
    say("other-closed", int(own_writer() == writer))


def _fill(run, other, rows, torch) -> tuple[int, dict]:
    """Log until WriterError, or until 2 s or 50,000 calls pass after the file stopped growing."""
    import asynclog

    run.event("ev", seq=0)
    run.flush(durable=True)  # something to read back, however soon the disk fills
    size, grew_at, calls_since = -1, time.monotonic(), 0
    logged = 1
    try:
        while True:
            run.event("ev", seq=logged)
            logged += 1
            run.tensor("t", torch.randn(1 << 16))
            rows.append(row_id=logged, x=torch.randn(1024))
            other.event("other", i=logged)
            calls_since += 4
            now, current = time.monotonic(), os.stat(run.path).st_size
            if current != size:
                size, grew_at, calls_since = current, now, 0
            elif now - grew_at > 2.0 or calls_since > 50_000:
                return logged, {"error": None, "seconds": now - grew_at, "calls": calls_since, "size": size}
    except asynclog.WriterError as exc:
        return logged, {"error": str(exc), "seconds": time.monotonic() - grew_at, "calls": calls_since,
                        "size": size}


def role_idle(directory: str) -> None:
    """Contract G: hold a run open until the test writes a line (or 30 s pass)."""
    import select

    import asynclog

    run = asynclog.start(directory, name="idle")
    run.event("hello")
    say("ready", own_writer())
    select.select([sys.stdin], [], [], 30)
    run.close()


ROLES = {"mixed": role_mixed, "writer_victim": role_writer_victim, "group_signal": role_group_signal,
         "forker": role_forker, "fill_disk": role_fill_disk, "idle": role_idle}

if __name__ == "__main__":
    import torch  # noqa: F401 - a probe is a torch process, as the real one is

    ROLES[sys.argv[1]](*sys.argv[2:])
