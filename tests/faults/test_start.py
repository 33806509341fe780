"""The writer starts in the background: ``start()`` returns at once, a writer that cannot start is reported
at the run's next call, and a group signal that lands while the writer is still starting does not kill it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import asynclog


# What the probes below call after start(): prints whether the run's next call raised, and what.
_NEXT_CALL = """
import asynclog

def next_call(run):
    try:
        run.event("x", i=1)
        run.flush()
        print("no error")
    except asynclog.WriterError as exc:
        print("raised:", str(exc).splitlines()[0])
"""


def probe(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` as a probe in a session of its own (so its group signals stay there)."""
    return subprocess.run([sys.executable, "-c", _NEXT_CALL + textwrap.dedent(code), *args], capture_output=True,
                          text=True, timeout=120, start_new_session=True)


def test_a_writer_that_cannot_start_fails_the_run_at_its_next_call_and_the_next_start_works(tmp_path):
    done = probe("""
        import os, sys, asynclog
        os.environ["PYTHONHOME"] = "/nonexistent"  # the writer's interpreter cannot start; this one is up
        run = asynclog.start(sys.argv[1], name="nostart")
        print("started", flush=True)
        next_call(run)
        del os.environ["PYTHONHOME"]
        again = asynclog.start(sys.argv[1], name="again")
        again.event("y", i=2)
        again.close()
        print("again closed", again.path)
    """, str(tmp_path))
    lines = done.stdout.splitlines()
    assert lines[:1] == ["started"], done.stdout + done.stderr[-2000:]
    assert lines[1].startswith("raised: writer process failed to start"), lines
    with asynclog.open(tmp_path / "again.alog") as log:
        assert log.complete and [e["name"] for e in log.events()] == ["y"]


def test_a_group_sigint_while_the_writer_starts_does_not_kill_it(tmp_path):
    for attempt in range(4):
        done = probe("""
            import os, signal, sys, time, asynclog
            run = asynclog.start(sys.argv[1], name=sys.argv[2])
            try:
                os.killpg(0, signal.SIGINT)  # Ctrl-C, at once: the writer is most likely still starting
                time.sleep(1.0)
            except KeyboardInterrupt:
                pass
            run.event("after", i=1)
            run.close()
            print("closed", flush=True)
        """, str(tmp_path), f"early{attempt}")
        assert done.stdout.splitlines() == ["closed"], done.stdout + done.stderr[-2000:]
        with asynclog.open(tmp_path / f"early{attempt}.alog") as log:
            assert log.complete and [e["name"] for e in log.events()] == ["after"]


def test_a_writer_killed_while_it_starts_fails_the_run_and_leaves_a_readable_file(tmp_path):
    done = probe("""
        import os, signal, sys, asynclog
        run = asynclog.start(sys.argv[1], name="killed")
        os.kill(run._channel.process.pid, signal.SIGKILL)  # most likely before its handshake
        next_call(run)
    """, str(tmp_path))
    lines = done.stdout.splitlines()
    assert lines and lines[0].startswith("raised: writer process"), done.stdout + done.stderr[-2000:]
    with asynclog.open(tmp_path / "killed.alog") as log:
        assert not log.complete and log.header["name"] == "killed"


def test_a_probe_killed_right_after_start_still_gets_its_run_closed_by_the_writer(tmp_path):
    done = probe("""
        import os, signal, sys, asynclog
        run = asynclog.start(sys.argv[1], name="gone", metadata={"checkpoint": "step_7"},
                             summary={"summary_path": sys.argv[1] + "/gone_summary.json", "summary": {"n": 1}})
        os.kill(os.getpid(), signal.SIGKILL)  # before the writer can have said it is up
    """, str(tmp_path))
    assert done.returncode == -9
    summary = tmp_path / "gone_summary.json"
    for _ in range(200):  # the writer, orphaned, closes the run on its own
        if summary.exists():
            break
        time.sleep(0.05)
    with asynclog.open(tmp_path / "gone.alog") as log:
        assert not log.complete and log.header["metadata"] == {"checkpoint": "step_7"}
        assert log.footer is not None and "probe" in log.footer["reason"]
        assert list(log.events()) == []
    assert summary.exists()


def test_bytes_staged_right_after_start_are_written_as_they_were(tmp_path):
    """The pool's pages are faulted in behind start()'s back while the probe already fills them."""
    done = probe("""
        import sys, torch, asynclog
        changed = 0
        for trial in range(3):  # each a writer and pool of its own (the staging size is part of the key)
            g = torch.Generator().manual_seed(trial)
            tensors = [torch.randint(1, 255, (8 << 20,), dtype=torch.uint8, generator=g) for _ in range(6)]
            run = asynclog.start(sys.argv[1], name=f"early{trial}", config={"staging_bytes": (512 + trial) << 20})
            for k, tensor in enumerate(tensors):
                run.tensor(f"t{k}", tensor)
            run.close()
            with asynclog.open(run.path) as log:
                changed += sum(not torch.equal(log.tensor(f"t{k}"), t) for k, t in enumerate(tensors))
        print("changed", changed)
    """, str(tmp_path))
    assert done.stdout.splitlines() == ["changed 0"], done.stdout + done.stderr[-2000:]


def test_a_start_that_cannot_write_the_header_raises_and_leaves_no_torn_file(tmp_path):
    done = probe("""
        import os, resource, signal, sys, asynclog
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, a write fails (EFBIG) instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, resource.RLIM_INFINITY))  # the header is longer
        try:
            asynclog.start(sys.argv[1], name="torn", metadata={"note": "x" * 1000})
            print("started")
        except OSError as exc:
            print("raised", exc.errno)
    """, str(tmp_path))
    assert done.stdout.split()[:1] == ["raised"], done.stdout + done.stderr[-2000:]
    assert not (tmp_path / "torn.alog").exists()


def test_a_file_changed_before_the_writer_takes_it_over_fails_the_run_not_the_file(tmp_path):
    done = probe("""
        import sys, asynclog
        run = asynclog.start(sys.argv[1], name="meddled")
        with open(run.path, "ab") as f:  # someone else writes to it while the writer is still starting
            f.write(b"not ours")
        next_call(run)
    """, str(tmp_path))
    lines = done.stdout.splitlines()
    assert lines and lines[0].startswith("raised:") and "changed by someone else" in lines[0], done.stdout + done.stderr


def test_a_writer_process_that_cannot_be_spawned_raises_at_start_and_leaves_no_thread(tmp_path):
    done = probe("""
        import os, resource, sys, threading, time, asynclog
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        fds = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (fds + 1, hard))
        try:
            asynclog.start(sys.argv[1], name="nofds")
            print("started")
        except (OSError, asynclog.AsyncLogError) as exc:
            print("raised:", type(exc).__name__)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        time.sleep(0.3)  # the sender and receiver, started before the spawn, see its failure and end
        print("threads:", sorted(t.name for t in threading.enumerate() if t.name.startswith("asynclog")))
        print("fds left open:", len(os.listdir("/proc/self/fd")) - fds)  # the pool's too: none
        again = asynclog.start(sys.argv[1], name="again")
        again.event("y", i=2)
        again.close()
    """, str(tmp_path))
    lines = done.stdout.splitlines()
    assert lines[:1] in (["raised: OSError"], ["raised: WriterError"]), done.stdout + done.stderr[-2000:]
    assert lines[1:3] == ["threads: []", "fds left open: 0"], done.stdout + done.stderr[-2000:]
    with asynclog.open(tmp_path / "again.alog") as log:
        assert log.complete and [e["name"] for e in log.events()] == ["y"]
