"""The stager's hand-over of copies that finish after ``stage`` returns (CUDA's ``non_blocking`` copies).

CI has no GPU, so these drive the stager with a copy that a CPU thread finishes later and that answers
``query``/``synchronize`` as a CUDA event does; tests/test_cuda.py runs the real thing where a GPU is lent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import torch

import asynclog
from asynclog._run import _tensor_spec
from asynclog._snapshot import tensor_meta


class LateCopy:
    """Copies ``data`` into the pool at ``offset`` on a thread of its own, ``delay`` seconds from now."""

    device = torch.device("cpu")  # as torch.cuda.Event has one

    def __init__(self, pool, offset: int, data: bytes, delay: float, fails: bool = False):
        self.fails = fails
        self.done = threading.Event()
        self.error: BaseException | None = None  # the copy's own failure (a pool unmapped under it)

        def copy() -> None:
            time.sleep(delay)
            try:
                pool.mmap[offset : offset + len(data)] = data
            except BaseException as exc:  # noqa: BLE001 - what the test asserts on
                self.error = exc
            self.done.set()

        threading.Thread(target=copy, name="late-copy", daemon=True).start()

    def query(self) -> bool:
        if self.fails:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.done.is_set()

    def synchronize(self) -> None:
        if self.fails:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        self.done.wait()


def stage_late(run, name: str, tensor: torch.Tensor, delay: float, fails: bool = False) -> list[LateCopy]:
    """Log ``tensor`` as ``run.tensor`` would a CUDA tensor: its bytes land in the pool ``delay`` s later."""
    data = tensor.numpy().tobytes()
    meta = tensor_meta(name, next(run._tids), tensor)
    meta.update(piece=0, pieces=1, offset=0)
    copies = []

    def fill(offset: int) -> LateCopy:
        copies.append(LateCopy(run._stager.pool, offset, data, delay, fails))
        return copies[-1]

    assert run._stager.stage(run.id, _tensor_spec(meta, tensor.element_size()), len(data), fill, "block")
    return copies


def test_later_pieces_wait_for_a_running_copy_and_reach_the_file_in_order(logdir):
    late, after = torch.arange(16384, dtype=torch.float32), torch.ones(16384)  # 64 KiB: through the pool
    with asynclog.start(logdir, name="order") as run:
        stage_late(run, "late", late, delay=0.2)
        run.tensor("after", after)
        run.event("marker")
    with asynclog.open(logdir / "order.alog") as log:
        assert torch.equal(log.tensor("late"), late) and torch.equal(log.tensor("after"), after)
        assert log.tensor_names() == ["late", "after"]


def test_a_full_pool_behind_a_running_copy_waits_for_it_and_loses_nothing(logdir):
    tensors = [torch.full((50_000,), float(i)) for i in range(12)]  # 12 x 200 KiB through a 1 MiB pool
    with asynclog.start(logdir, name="full", config={"staging_bytes": 1 << 20}) as run:
        stage_late(run, "late", torch.arange(16384, dtype=torch.float32), delay=0.3)
        for i, tensor in enumerate(tensors):
            run.tensor(f"t{i}", tensor)
    with asynclog.open(logdir / "full.alog") as log:
        assert log.tensor_names() == ["late", *(f"t{i}" for i in range(12))]
        assert all(torch.equal(log.tensor(f"t{i}"), t) for i, t in enumerate(tensors))


def test_threads_mixing_running_copies_and_cpu_tensors_through_a_full_pool_lose_nothing(logdir):
    per_thread = 12

    def produce(run, t: int) -> None:
        for k in range(per_thread):
            tensor = torch.full((40_000,), float(t * 100 + k))  # 160 KiB: a 1 MiB pool fills at once
            if k % 3 == 0:
                stage_late(run, f"t{t}/{k}", tensor, delay=0.002 * (k % 5))
            else:
                run.tensor(f"t{t}/{k}", tensor)
            if k % 5 == 4:
                run.flush()

    with asynclog.start(logdir, name="threads", config={"staging_bytes": 1 << 20}) as run:
        threads = [threading.Thread(target=produce, args=(run, t)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    with asynclog.open(logdir / "threads.alog") as log:
        names = log.tensor_names()
        for t in range(4):
            assert [n for n in names if n.startswith(f"t{t}/")] == [f"t{t}/{k}" for k in range(per_thread)]
            assert all(torch.equal(log.tensor(f"t{t}/{k}"), torch.full((40_000,), float(t * 100 + k)))
                       for k in range(per_thread))


def test_a_finished_copy_reaches_the_writer_though_the_probe_makes_no_other_call(logdir):
    tensor = torch.arange(16384, dtype=torch.float32)
    run = asynclog.start(logdir, name="idle", config={"flush_interval_s": 60})
    try:
        [copy] = stage_late(run, "late", tensor, delay=0.05)
        copy.done.wait(5)
        deadline = time.monotonic() + 10
        while run._stager._pending and time.monotonic() < deadline:
            time.sleep(0.01)  # the probe's thread is idle here: only the sender's poll can hand it over
        assert not run._stager._pending
    finally:
        run.close()
    with asynclog.open(logdir / "idle.alog") as log:
        assert torch.equal(log.tensor("late"), tensor)


def test_a_writer_dying_during_a_copy_lets_it_finish_before_the_pool_goes(logdir):
    run = asynclog.start(logdir, name="dying")
    try:
        [copy] = stage_late(run, "late", torch.ones(16384), delay=0.3)
        os.kill(run._channel.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while run._channel.error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert copy.done.wait(10)
        assert copy.error is None, copy.error  # the pool was still mapped when the copy landed
        while run._stager._pending and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not run._stager._pending  # and the piece, which can go nowhere now, is let go with its source
    finally:
        with contextlib.suppress(asynclog.WriterError):
            run.close()


def test_no_thread_is_started_for_copies(logdir):
    # In a process of its own: the stager lives as long as its writer, which earlier tests share.
    code = f"""
        import sys, threading, torch, asynclog
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_snapshot import stage_late
        with asynclog.start(sys.argv[1], name="threads") as run:
            run.tensor("first", torch.ones(16384))  # the pool's one thread, faulting pages in, starts here
            run.flush()
            before = {{t.ident for t in threading.enumerate()}}
            for i in range(5):
                stage_late(run, f"t{{i}}", torch.ones(16384), delay=0.01)
            run.flush()
            print([t.name for t in threading.enumerate() if t.ident not in before and t.name != "late-copy"])
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(logdir)], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.strip() == "[]", (done.stdout, done.stderr[-2000:])
    with asynclog.open(logdir / "threads.alog") as log:
        assert log.tensor_names() == ["first"] + [f"t{i}" for i in range(5)]


def test_a_failed_copy_fails_the_next_call_keeps_what_came_before_and_a_new_run_logs(logdir):
    # In a process of its own: a failed copy fails every run on its writer, which earlier tests share.
    code = f"""
        import sys, time, torch, asynclog
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_snapshot import stage_late
        run = asynclog.start(sys.argv[1], name="failed")
        run.tensor("before", torch.ones(16384))
        run.flush()
        stage_late(run, "broken", torch.ones(16384), delay=0.0, fails=True)
        time.sleep(0.05)
        for call in (lambda: run.tensor("next", torch.zeros(16384)), run.flush, run.close):
            try:
                call()
                print("no error")
            except asynclog.WriterError as exc:
                print("raised", "illegal memory access" in str(exc))
        with asynclog.start(sys.argv[1], name="later") as later:
            later.tensor("fine", torch.ones(16384))
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(logdir)], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.split("\n")[:3] == ["raised True"] * 3, (done.stdout, done.stderr[-2000:])
    assert done.returncode == 0, done.stderr[-2000:]
    with asynclog.open(logdir / "failed.alog") as log:
        assert torch.equal(log.tensor("before"), torch.ones(16384))
        assert "next" not in log.tensor_names()
    with asynclog.open(logdir / "later.alog") as log:
        assert log.complete and torch.equal(log.tensor("fine"), torch.ones(16384))
