"""A full queue or pool under each policy, made full for real by stopping the writer with SIGSTOP."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import asynclog
from conftest import SMALL, Stopped

def _fill(run, count: int, payload: str = "x" * 2000) -> int:
    """Log until ``count`` events went through the call; return how many were handed over."""
    for i in range(count):
        run.event("e", i=i, payload=payload)
    return count


def test_drop_policy_counts_what_it_drops(logdir):
    run = asynclog.start(logdir, name="drop", config={**SMALL, "policy": "drop", "queue_batches": 3})
    with Stopped(run):
        _fill(run, 400)
        # 800 KB into a 1 MiB pool: the second cannot fit, and neither fits a queue that is full by now;
        # neither call may wait.
        kept_tensors = [run.tensor("big", torch.zeros(200_000)) for _ in range(2)]
    run.close()
    stats = run.result["stats"]
    with asynclog.open(run.path) as log:
        kept = [r["data"]["i"] for r in log.events()]
        assert log.footer["stats"]["dropped_records"] == stats["dropped_records"]
        assert ("big" in log.tensor_names()) == any(kept_tensors)
    assert stats["dropped_records"] > 0 and len(kept) + stats["dropped_records"] == 400
    assert kept == sorted(kept)
    assert not kept_tensors[1] and stats["dropped_tensors"] == kept_tensors.count(False)


def test_error_policy_raises_and_keeps_what_was_logged(logdir):
    run = asynclog.start(logdir, name="error", config={**SMALL, "policy": "error"})
    handed = 0
    with Stopped(run):
        with pytest.raises(asynclog.QueueFullError):
            for i in range(10_000):
                run.event("e", i=i, payload="x" * 2000)
                handed += 1
    run.close()
    with asynclog.open(run.path) as log:
        assert [r["data"]["i"] for r in log.events()] == list(range(handed))


def test_block_policy_waits_for_the_writer_and_loses_nothing(logdir):
    run = asynclog.start(logdir, name="block", config=SMALL)
    done = threading.Event()

    def produce():
        _fill(run, 300)
        run.tensor("t", torch.arange(300_000))
        done.set()

    with Stopped(run):
        thread = threading.Thread(target=produce)
        thread.start()
        time.sleep(0.5)
        assert not done.is_set()  # backpressure: the producer waits while the writer cannot take more
    thread.join(30)
    assert done.is_set()
    run.close()
    with asynclog.open(run.path) as log:
        assert [r["data"]["i"] for r in log.events()] == list(range(300))
        assert torch.equal(log.tensor("t"), torch.arange(300_000))
    assert run.result["stats"]["queue_high_water"] >= 1


def test_calls_return_while_the_writer_is_stopped_and_everything_arrives(logdir):
    """The probe does not wait for the disk: with room in the queue and pool, no call waits for the writer."""
    run = asynclog.start(logdir, name="not-waiting")
    logged = threading.Event()

    def produce():
        for i in range(1000):
            run.event("e", i=i)
        run.tensor("t", torch.arange(100_000))
        logged.set()

    with Stopped(run):
        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        thread.join(60)  # a hang detector: a call that waited for the stopped writer would never return
        assert logged.is_set(), "a call waited for the stopped writer"
    run.close()
    with asynclog.open(run.path) as log:
        assert [r["data"]["i"] for r in log.events()] == list(range(1000))
        assert torch.equal(log.tensor("t"), torch.arange(100_000))
