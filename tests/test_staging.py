"""The staging pool takes memory as it is used: a run that stages nothing holds none of it, one that stages a
little holds a little, and the background thread that faults pages in imports nothing.

Memory is read from /proc in fresh processes (a probe's own), with bounds far from what is measured.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from asynclog._staging import StagingPool

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc/self/status")

_MEMORY = """
def mib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0
"""


def probe(code: str, *args: str) -> str:
    """Run ``code`` in a fresh interpreter; its stdout, after checking it exited cleanly."""
    done = subprocess.run([sys.executable, "-c", _MEMORY + textwrap.dedent(code), *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def shmem_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssShmem:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_a_run_of_events_only_holds_almost_none_of_its_pool(logdir):
    pool_mib = 512
    out = probe(f"""
        import sys, time, asynclog
        before = mib("VmRSS")
        run = asynclog.start(sys.argv[1], name="events", config={{"staging_bytes": {pool_mib} << 20}})
        for i in range(5000):
            run.event("core", i=i, loss=0.5, note="x")
        run.flush()
        time.sleep(1.0)  # anything start() left running in the background has had its time
        print(mib("VmRSS") - before, mib("RssShmem"))
        run.close()
    """, str(logdir))
    growth, shmem = map(float, out.split())
    assert growth < pool_mib / 4, out
    assert shmem < 4, out


def test_a_run_holds_pool_memory_as_it_stages_and_its_tensors_come_back(logdir):
    pool_mib, staged_mib = 256, 8
    out = probe(f"""
        import sys, time, torch, asynclog
        with asynclog.start(sys.argv[1], name="some", config={{"staging_bytes": {pool_mib} << 20}}) as run:
            for i in range({staged_mib}):
                run.tensor(f"t{{i}}", torch.full((1 << 18,), float(i)))  # 1 MiB each
            run.flush()
            time.sleep(1.0)
            print(mib("RssShmem"))
    """, str(logdir))
    shmem = float(out)
    assert staged_mib <= shmem < pool_mib / 4, out
    import asynclog

    with asynclog.open(logdir / "some.alog") as log:
        for i in range(staged_mib):
            assert log.tensor(f"t{i}").eq(float(i)).all()


def test_a_probe_that_never_imported_numpy_can_log_right_after_start(tmp_path):
    # The pool's background thread once imported numpy, so a probe's first record or row could find a
    # half-initialised numpy module (AttributeError). It fails within a few trials when it happens.
    code = """
        import pathlib, sys, asynclog
        assert "numpy" not in sys.modules
        run = asynclog.start(sys.argv[1], name=sys.argv[2])
        rows = run.stream("rows", chunk_rows=1)  # every row is staged in the pool at once
        for i in range(20):
            run.event("paths", path=pathlib.Path("/data") / str(i))
            rows.append(sequence_id=i, text="a row")
        run.close()
    """
    failures = []
    for wave in range(5):  # 40 probes, 8 at a time
        trials = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(tmp_path), f"t{wave}-{n}"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for n in range(8)]
        failures += [err for trial in trials for err in [trial.communicate(timeout=120)[1]] if trial.returncode]
    assert not failures, f"{len(failures)} of 40 probes failed; the first:\n{failures[0][-2000:]}"


def test_pinning_for_cuda_faults_the_whole_pool_in_first():
    pool = StagingPool(16 << 20)
    try:
        before = shmem_mib()
        pool.fault_in()  # what Stager.pin_for_cuda does before cudaHostRegister
        assert shmem_mib() - before >= 16
    finally:
        pool.close()


def test_a_pool_closed_while_its_pages_are_faulted_in_stops_the_thread_first():
    pool = StagingPool(64 << 20)
    assert pool.try_allocate(16 << 20) is not None  # the faulting thread starts, and has 32 MiB to go
    toucher = pool._toucher
    pool.close()
    assert not toucher._thread.is_alive()
    pool.close()  # twice is safe
