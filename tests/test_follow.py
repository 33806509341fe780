"""``asynclog cat --follow`` and ``show --follow`` against a real writer in another process: records appear as
they are appended, the footer ends the follow, a killed probe or writer, Ctrl-C, and frames still being written."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from asynclog import _format as fmt
from asynclog._follow import Ended, Follower, held_for_writing

WAIT_S = 20.0  # the most any step here may take on a loaded machine before the test calls it a hang

# A probe that logs one step each time it reads a line on stdin, so the test knows what is on disk when.
LOCKSTEP_PROBE = """
    import sys, asynclog
    run = asynclog.start(path=sys.argv[1], config={"flush_interval_s": 0.05})
    print("writer", run._channel.process.pid, flush=True)
    for i, line in enumerate(sys.stdin):
        if line.strip() == "close":
            break
        run.event("step", i=i)
        run.flush()
        print("logged", i, flush=True)
    run.close()
"""

# Copies a finished log into a new file in two pieces, cut inside a frame, pausing between them: a writer
# caught mid-frame, which a real writer cannot be made to stop at. Its command line names asynclog, as the
# real writer's does, so the follower sees a process holding the file for writing.
SLOW_APPENDER = """
    # an asynclog appender
    import os, sys, time
    source, target, cut, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    data = open(source, "rb").read()
    with open(target, "ab", buffering=0) as f:
        f.write(data[:cut])
        print("cut", flush=True)
        time.sleep(pause)
        f.write(data[cut:])
    print("done", flush=True)
"""


class Lines:
    """A process's stdout read line by line on a thread, so a test can wait for the next line with a timeout."""

    def __init__(self, process: subprocess.Popen):
        self.process, self._lines = process, queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def next(self, timeout: float = WAIT_S) -> str | None:
        """The next line; None at end of output; AssertionError when none comes within ``timeout``."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout} s") from None


def start(args: list[str], stdin=None) -> subprocess.Popen:
    return subprocess.Popen(args, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


def python(code: str, *args: str, stdin=None) -> subprocess.Popen:
    return start([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], stdin=stdin)


def follow(*args: str) -> tuple[subprocess.Popen, Lines]:
    process = start([sys.executable, "-m", "asynclog", *args])
    return process, Lines(process)


@pytest.fixture
def processes():
    """Every process a test starts, killed and reaped at its end whatever happened."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(WAIT_S)


def lockstep_probe(path, processes) -> tuple[subprocess.Popen, Lines, int]:
    probe = python(LOCKSTEP_PROBE, path, stdin=subprocess.PIPE)
    processes.append(probe)
    said = Lines(probe)
    writer = int(said.next().split()[1])
    return probe, said, writer


def probe_and_follower(path, processes, *options: str):
    """A lockstep probe writing ``path`` and ``cat --follow`` of it, once the follower has printed the header."""
    probe, said, writer = lockstep_probe(path, processes)
    follower, out = follow("cat", "--follow", *options, str(path))
    processes.append(follower)
    assert record(out.next())["type"] == "header"
    return probe, said, writer, follower, out


def step(probe: subprocess.Popen, said: Lines, i: int) -> None:
    probe.stdin.write("step\n")
    probe.stdin.flush()
    assert said.next() == f"logged {i}"


def record(line: str) -> dict:
    return json.loads(line)


def step_of(line: str) -> int:
    r = record(line)
    assert (r["type"], r["name"]) == ("event", "step"), line
    return r["data"]["i"]


def test_follow_prints_each_record_as_the_writer_appends_it_and_ends_at_the_footer(tmp_path, processes):
    path = tmp_path / "run.alog"
    probe, said, _, follower, out = probe_and_follower(path, processes)
    for i in range(3):  # step i+1 is not logged before the follower has printed step i
        step(probe, said, i)
        assert step_of(out.next()) == i
    probe.stdin.write("close\n")
    probe.stdin.flush()
    footer = record(out.next())
    assert (footer["type"], footer["complete"]) == ("footer", True)
    assert out.next() is None
    assert follower.wait(WAIT_S) == 0


def test_follow_of_a_killed_probe_ends_at_the_footer_its_writer_writes(tmp_path, processes):
    path = tmp_path / "run.alog"
    probe, said, _, follower, out = probe_and_follower(path, processes)
    step(probe, said, 0)
    assert step_of(out.next()) == 0
    probe.kill()
    footer = record(out.next())
    assert (footer["type"], footer["complete"]) == ("footer", False)
    assert "probe" in footer["reason"]
    assert follower.wait(WAIT_S) == 0


def test_follow_ends_incomplete_once_writer_and_probe_are_killed_and_the_log_is_quiet(tmp_path, processes):
    path = tmp_path / "run.alog"
    probe, said, writer, follower, out = probe_and_follower(path, processes, "--quiet", "1")
    step(probe, said, 0)
    assert step_of(out.next()) == 0
    os.kill(writer, signal.SIGKILL)
    probe.kill()
    assert out.next() is None  # no footer will come: the follow ends instead of waiting for ever
    assert follower.wait(WAIT_S) == 2
    assert "its writer is gone" in follower.stderr.read()


def test_sigint_ends_a_follow_with_status_130_and_no_traceback(tmp_path, processes):
    path = tmp_path / "run.alog"
    probe, said, _, follower, out = probe_and_follower(path, processes)
    follower.send_signal(signal.SIGINT)
    assert follower.wait(WAIT_S) == 130
    assert follower.stderr.read() == ""


def finished_log(tmp_path) -> str:
    import asynclog

    path = str(tmp_path / "finished.alog")
    with asynclog.start(path=path) as run:
        for i in range(3):
            run.event("step", i=i)
            run.flush()  # one records frame per step
    return path


def frame_offsets(path) -> list[int]:
    with open(path, "rb") as f:
        return [header.offset for header in fmt.scan_frames(f)]


def test_a_frame_still_being_written_is_waited_on_not_reported_as_damage(tmp_path, processes):
    source = finished_log(tmp_path)
    target = tmp_path / "growing.alog"
    cut = frame_offsets(source)[2] + fmt.HEADER_SIZE + 3  # inside the second records frame's payload
    appender = python(SLOW_APPENDER, source, target, cut, 3.0)
    processes.append(appender)
    assert Lines(appender).next() == "cut"
    with Follower(target, quiet_s=0.5, poll_s=0.05) as follower:  # quiet far shorter than the pause
        steps = [follower.log.records(item[0])[0]["data"]["i"] for item in follower
                 if not isinstance(item, fmt.Damage) and item[0].kind == fmt.FrameKind.RECORDS]
    assert steps == [0, 1, 2]
    assert follower.ended is Ended.FOOTER


def test_damage_with_an_intact_frame_after_it_is_skipped_and_named(tmp_path):
    source = finished_log(tmp_path)
    damaged_at = frame_offsets(source)[2]
    data = bytearray(open(source, "rb").read())
    data[damaged_at + fmt.HEADER_SIZE + 1] ^= 0xFF  # a payload byte of the second records frame
    open(source, "wb").write(data)
    done = subprocess.run([sys.executable, "-m", "asynclog", "cat", "--follow", source], capture_output=True,
                          text=True, timeout=WAIT_S)
    assert done.returncode == 1
    assert [step_of(line) for line in done.stdout.splitlines()[1:-1]] == [0, 2]
    assert f"at offset {damaged_at}" in done.stderr


def test_a_log_nobody_writes_is_abandoned_after_the_quiet_time_and_its_torn_tail_named(tmp_path):
    source = finished_log(tmp_path)
    cut = frame_offsets(source)[3] + 5
    torn = tmp_path / "torn.alog"
    shutil.copyfile(source, torn)
    os.truncate(torn, cut)
    with Follower(torn, quiet_s=0.3, poll_s=0.05) as follower:
        items = list(follower)
    assert follower.ended is Ended.ABANDONED
    assert items[-1] == fmt.Damage(frame_offsets(source)[3], 5, "log cut inside a frame header", torn=True)


def test_show_follow_of_an_abandoned_log_prints_its_records_and_summary_and_exits_2(tmp_path):
    source = finished_log(tmp_path)
    torn = tmp_path / "torn.alog"
    shutil.copyfile(source, torn)
    os.truncate(torn, frame_offsets(source)[-1] + 5)  # the footer frame cut short
    done = subprocess.run([sys.executable, "-m", "asynclog", "show", "--follow", "--quiet", "0.3", str(torn)],
                          capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 2
    assert [line.endswith(f"event step  i={i}") for i, line in enumerate(done.stdout.splitlines()[:3])] == [True] * 3
    assert "status      incomplete" in done.stdout
    assert "its writer is gone" in done.stderr


def test_a_finished_log_follows_to_the_lines_cat_prints(tmp_path):
    source = finished_log(tmp_path)
    cat, follow_ = (subprocess.run([sys.executable, "-m", "asynclog", "cat", *flag, source], capture_output=True,
                                   text=True, timeout=WAIT_S) for flag in ([], ["--follow"]))
    assert (follow_.returncode, follow_.stdout) == (cat.returncode, cat.stdout) == (0, cat.stdout)
    assert len(cat.stdout.splitlines()) == 5  # header, three steps, footer


def test_held_for_writing_sees_the_writer_and_cannot_tell_for_another_machine(tmp_path, processes):
    path = tmp_path / "run.alog"
    probe, said, writer = lockstep_probe(path, processes)
    step(probe, said, 0)
    assert held_for_writing(str(path)) is True
    assert held_for_writing(str(path), host="a-machine-that-is-not-this-one") is None
    probe.stdin.write("close\n")
    probe.stdin.flush()
    assert probe.wait(WAIT_S) == 0
    deadline = time.monotonic() + WAIT_S
    while held_for_writing(str(path)) and time.monotonic() < deadline:  # the writer closes the file, then exits
        time.sleep(0.05)
    assert held_for_writing(str(path)) is False


def test_show_follow_prints_a_line_per_record_then_the_summary(tmp_path, processes):
    path = tmp_path / "run.alog"
    probe, said, _ = lockstep_probe(path, processes)
    follower, out = follow("show", "--follow", str(path))
    processes.append(follower)
    step(probe, said, 0)
    assert out.next().endswith("event step  i=0")
    probe.stdin.write("close\n")
    probe.stdin.flush()
    rest = []
    while (line := out.next()) is not None:
        rest.append(line)
    assert follower.wait(WAIT_S) == 0
    assert rest[0] == "" and "status      complete" in rest
