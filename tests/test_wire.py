"""The probe <-> writer boundary: typed messages, a writer that survives what it cannot act on, failures that
reach the next call, and waits that end."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
import warnings

import msgspec
import pytest
import torch

import asynclog
from asynclog import _wire as wire

from conftest import SMALL, Stopped


def _other_run_keeps_working(logdir, run) -> None:
    run.event("still_here")
    run.close()
    with asynclog.open(run.path) as log:
        assert log.complete and "still_here" in [r["name"] for r in log.events()]


def test_every_message_round_trips_through_its_decoder():
    raw = msgspec.Raw(msgspec.msgpack.encode({"name": "t"}))
    spec = wire.FrameSpec(3, raw, "t", 2, 4, True)
    for msg in [wire.Open(1, 2, "/x.alog", 96, None, wire.RunOptions("auto", 3, 1.25)), wire.Records(2, 1, b"\x01", [(spec, b"ab")]),
                wire.Staged(2, spec, 64, 10, 128), wire.Sync(3, 2, True), wire.Close(4, 2, {"complete": True}),
                wire.Shutdown()]:
        again = wire.probe_decoder.decode(wire.encode(msg))
        assert type(again) is type(msg) and wire.encode(again) == wire.encode(msg)
    for msg in [wire.Ready(5, "h", wire.WIRE_VERSION), wire.Done(1, {"a": 1}), wire.Failed(2, 0, "disk full", 28)]:
        assert wire.writer_decoder.decode(wire.encode(msg)) == msg


def test_the_writer_module_imports_no_probe_machinery():
    code = "import sys, asynclog._writer; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    ours = {m for m in loaded if m.startswith("asynclog")}
    assert ours == {"asynclog", "asynclog._wire", "asynclog._format", "asynclog._filters", "asynclog._files",
                    "asynclog._writer"}
    assert not loaded & {"torch", "yaml", "numpy", "asynclog._session", "asynclog._channel", "asynclog._run"}


def test_writer_survives_a_message_it_cannot_act_on(logdir):
    run = asynclog.start(logdir, name="bystander")
    run.event("before")
    channel = run._channel
    ask = channel.new_ask()
    bad = wire.Open(ask, 10_000, str(logdir / "bad\x00name.alog"), 0, None, wire.RunOptions("auto", 3, 1.25))
    with pytest.raises(asynclog.WriterError, match="null|NUL"):
        channel.request(ask, wire.encode(bad), "opening a bad path")
    assert channel.process.poll() is None and channel.error is None
    _other_run_keeps_working(logdir, run)


def _limit_file_size(run, nbytes: int) -> None:
    # A file-size limit on the writer makes its writes fail with EFBIG, as a full disk fails them with ENOSPC.
    resource.prlimit(run._channel.process.pid, resource.RLIMIT_FSIZE, (nbytes, resource.RLIM_INFINITY))


def test_a_write_error_reaches_the_next_call_without_a_flush(logdir):
    bystander = asynclog.start(logdir, name="bystander")
    run = asynclog.start(logdir, name="full", config={"compression": "raw"})
    _limit_file_size(run, 1 << 20)
    with pytest.raises(asynclog.WriterError) as info:
        for i in range(200_000):  # bounded: about 3 GB offered against a 1 MiB limit
            run.event("e", i=i)
            run.tensor("t", torch.randn(32 << 10))
    assert info.value.errno is not None and "full.alog" in str(info.value) and "File too large" in str(info.value)
    assert run.close() == run.path
    with asynclog.open(run.path) as log:
        assert not log.complete or log.cut_at is not None
        logged = [r["data"]["i"] for r in log.events()]
        assert logged == list(range(len(logged)))  # a prefix, intact
    _other_run_keeps_working(logdir, bystander)


def test_on_write_error_warn_stops_logging_that_run_once(logdir):
    run = asynclog.start(logdir, name="warned", config={"compression": "raw", "on_write_error": "warn"})
    _limit_file_size(run, 1 << 20)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for i in range(200_000):
            run.event("e", i=i)
            if not run.tensor("t", torch.randn(32 << 10)):
                break
        run.event("after")  # muted: no error, no second warning
    assert len([w for w in seen if "logging to" in str(w.message)]) == 1
    assert run.close() == run.path
    with asynclog.open(run.path) as log:
        assert "after" not in [r["name"] for r in log.events()]


def test_close_waits_at_most_its_timeout_and_names_what_is_stuck(logdir):
    run = asynclog.start(logdir, name="stuck")
    run.event("e")
    with Stopped(run):
        with pytest.raises(asynclog.WriterError, match="closing the run"):
            run.close(timeout=0.5)
    assert run.closed


def test_a_blocked_producer_gives_up_after_timeout_s(logdir):
    run = asynclog.start(logdir, name="blocked", config={**SMALL, "timeout_s": 0.5})
    with Stopped(run):
        with pytest.raises(asynclog.WriterError, match="full queue|staging space"):
            for i in range(100_000):
                run.event("e", i=i, payload="x" * 2000)
    # The writer runs again: let it drain the full queue before closing, since close() waits for room in the
    # queue at most timeout_s too (0.5 s here, short for a loaded machine to write 64 batches).
    deadline = time.monotonic() + 60
    while run._channel.full() and time.monotonic() < deadline:
        time.sleep(0.01)
    run.close()


def test_error_policy_refuses_without_keeping_the_refused_call(logdir):
    run = asynclog.start(logdir, name="refused", config={**SMALL, "policy": "error"})
    handed = 0
    with Stopped(run):
        for _ in range(100):  # fill until the pipe and the queue stay full while the sender waits on the pipe
            try:
                for _ in range(10_000):
                    run.event("e", i=handed, payload="x" * 2000)
                    handed += 1
            except asynclog.QueueFullError:
                time.sleep(0.05)
                if run._channel.full():
                    break
        buffered = len(run._batch), len(run._inline)
        for _ in range(50):
            with pytest.raises(asynclog.QueueFullError):
                run.event("e", i=-1, payload="x" * 2000)
        for small_then_pooled in (4_000, 16_000):  # 16 KB rides inline and would ship the batch; 64 KB is pooled
            with pytest.raises(asynclog.QueueFullError):
                run.tensor("refused", torch.zeros(small_then_pooled))
        assert (len(run._batch), len(run._inline)) == buffered  # nothing refused was kept, nothing re-queued
    run.close()
    with asynclog.open(run.path) as log:
        assert [r["data"]["i"] for r in log.events()] == list(range(handed))
        assert "refused" not in log.tensor_names()


def test_a_dead_sender_thread_fails_the_next_call_instead_of_hanging(logdir):
    run = asynclog.start(logdir, name="sender", config={"staging_bytes": 2 << 20})

    def broken(message):
        raise RuntimeError("injected: the sender cannot send")

    run._channel._data.send_bytes = broken  # a fault no real pipe produces on demand
    with pytest.raises(asynclog.WriterError, match="sender thread failed|cannot send"):
        for i in range(100_000):
            run.event("e", i=i, payload="x" * 1000)
    assert run.close(timeout=5) == run.path
    deadline = time.monotonic() + 10  # the failing thread releases the channel just after it reports
    while not run._channel.pool.mmap.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert run._channel.pool.mmap.closed  # the pool mapping went with the channel


def test_a_signal_to_the_process_group_leaves_the_writer_serving(logdir):
    run = asynclog.start(logdir, name="signalled")
    os.kill(run._channel.process.pid, signal.SIGTERM)
    run.event("after_sigterm")
    run.close()
    with asynclog.open(run.path) as log:
        assert log.complete and [r["name"] for r in log.events()] == ["after_sigterm"]


def test_an_asynclog_folder_in_the_working_directory_does_not_become_the_writer(tmp_path):
    impostor = tmp_path / "asynclog"
    impostor.mkdir()
    (impostor / "__init__.py").write_text("raise SystemExit('the wrong asynclog was imported')\n")
    (impostor / "writer.py").write_text("")
    code = ("import sys; sys.path.remove(''); import asynclog; run = asynclog.start('logs', name='x'); "
            "run.event('e'); print(run.close())")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with asynclog.open(done.stdout.strip()) as log:
        assert log.complete and [r["name"] for r in log.events()] == ["e"]
