"""Crashes with real processes and real signals: kill -9 of the probe, of the writer, Ctrl-C, exit without close."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

import asynclog
from conftest import spawn_script, wait_gone

PROBE = """
import sys, time, torch, asynclog
run = asynclog.start(sys.argv[1], name="crash", level="debug", config={"flush_interval_s": 0.2})
print("writer", run._channel.process.pid, flush=True)
stream = run.stream("tokens", chunk_rows=8)
i = 0
while True:
    run.event("step", i=i)
    stream.append(sequence_id=i, tokens=torch.full((5,), i))
    if i % 50 == 0:
        run.tensor("snap", torch.full((100,), i))
        print("logged", i, flush=True)
    i += 1
    time.sleep(0.0005)
"""


def test_kill_producer_keeps_everything_flushed_before_the_kill(logdir):
    probe = spawn_script(PROBE, str(logdir))
    writer_pid = int(probe.stdout.readline().split()[1])
    logged_at: list[tuple[int, float]] = []
    while not logged_at or logged_at[-1][0] < 1500:
        line = probe.stdout.readline()
        assert line, probe.stderr.read()
        logged_at.append((int(line.split()[1]), time.monotonic()))
    os.kill(probe.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    probe.wait()
    wait_gone(writer_pid)  # the writer drains, writes an incomplete footer, and exits: no orphan
    # Everything logged one flush interval (0.2 s) plus a margin before the kill must be there.
    safe = max(i for i, t in logged_at if t <= killed_at - 0.5)
    with asynclog.open(logdir / "crash.alog") as log:
        assert log.footer is not None and not log.complete
        assert "without closing" in log.footer["reason"]
        steps = [r["data"]["i"] for r in log.events(name="step")]
        assert steps == list(range(len(steps))) and steps[-1] >= safe
        rows = [r["sequence_id"] for r in log.rows("tokens")]
        assert rows == list(range(len(rows))) and rows[-1] >= safe - 8
        assert log.tensor("snap")[0].item() >= safe - 50
    assert asynclog.verify(logdir / "crash.alog")[1] == []


def test_kill_writer_makes_the_producer_raise_not_hang(logdir):
    run = asynclog.start(logdir, name="writer_dies", config={"staging_bytes": 4 << 20, "queue_batches": 4})
    run.event("before", i=1)
    run.flush()  # the writer is up and writing (its death while starting: tests/faults/test_start.py)
    os.kill(run._channel.process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    with pytest.raises(asynclog.WriterError) as info:
        while time.monotonic() < deadline:
            run.event("after", payload="x" * 1000)
            run.tensor("t", torch.zeros(1 << 18))
    assert time.monotonic() < deadline
    assert "died" in str(info.value) or "cannot send" in str(info.value)
    assert info.value.exitcode == -signal.SIGKILL
    assert run.close() == run.path and run.closed  # the failure was raised once already; close does not repeat it
    # The next run gets a fresh writer.
    with asynclog.start(logdir, name="after_death") as again:
        again.event("ok")
    with asynclog.open(again.path) as log:
        assert [r["name"] for r in log.events()] == ["ok"]


def test_ctrl_c_leaves_a_closed_readable_log(logdir):
    probe = spawn_script("""
        import sys, time, asynclog
        run = asynclog.start(sys.argv[1], name="ctrl_c")
        i = 0
        while True:
            run.event("step", i=i)
            if i == 100:
                print("ready", flush=True)
            i += 1
            time.sleep(0.001)
    """, str(logdir))
    assert probe.stdout.readline().strip() == "ready"
    probe.send_signal(signal.SIGINT)
    _, err = probe.communicate(timeout=60)
    assert "KeyboardInterrupt" in err
    with asynclog.open(logdir / "ctrl_c.alog") as log:
        assert log.complete and log.footer["reason"] == "closed at interpreter exit"
        assert len(list(log.events(name="step"))) > 100


def test_interpreter_exit_closes_an_open_run(logdir):
    probe = spawn_script("""
        import sys, asynclog
        run = asynclog.start(sys.argv[1], name="atexit")
        run.event("only")
    """, str(logdir))
    probe.communicate(timeout=60)
    assert probe.returncode == 0
    with asynclog.open(logdir / "atexit.alog") as log:
        assert log.complete and [r["name"] for r in log.events()] == ["only"]


def test_forked_child_cannot_log_to_the_parents_run(logdir):
    with asynclog.start(logdir, name="fork") as run:
        run.event("parent")
        pid = os.fork()
        if pid == 0:
            try:
                run.event("child")
                code = 1
            except asynclog.ClosedError:
                code = 0
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        run.event("parent_again")
    with asynclog.open(run.path) as log:
        assert [r["name"] for r in log.events()] == ["parent", "parent_again"]


def test_full_disk_fails_that_run_clearly_and_keeps_what_was_written(logdir):
    # A file-size limit inherited by the writer makes its writes fail with EFBIG, as a full disk would.
    probe = spawn_script("""
        import resource, sys, torch, asynclog
        run = asynclog.start(sys.argv[1], name="full", config={"compression": "raw"})
        resource.prlimit(run._channel.process.pid, resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
        run.event("first", i=0)
        run.flush(durable=True)
        try:
            for i in range(100):
                run.tensor("t", torch.randn(64 << 10))
                run.flush(durable=True)
        except asynclog.WriterError as exc:
            print("raised", exc, flush=True)
        other = asynclog.start(sys.argv[1], name="small")  # the writer still serves other runs
        other.event("fine")
        print("closed", other.close(), flush=True)
    """, str(logdir))
    out, err = probe.communicate(timeout=120)
    assert probe.returncode == 0, err
    assert "raised writing" in out and "full.alog" in out and "File too large" in out
    with asynclog.open(logdir / "full.alog") as log:
        assert not log.complete
        assert [r["name"] for r in log.events()] == ["first"]
        assert log.tensor_count("t") >= 1
    with asynclog.open(logdir / "small.alog") as log:
        assert log.complete and [r["name"] for r in log.events()] == ["fine"]
