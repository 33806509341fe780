"""kill -9 at random moments: of the probe (what flush() confirmed survives), of the writer (the probe raises,
never hangs, leaks nothing), and of a probe whose forked child keeps its file descriptors."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import asynclog
from faults.workload import (  # noqa: F401 - reaper is a fixture
    gone, reaper, row_tokens, run_trials, same_bits, tensor_value)

ORPHAN_WAIT_S = 10.0
RAISE_BOUND_S = 10.0
FOOTER_WAIT_S = 5.0


def trials(full: bool, default: int, many: int = 50) -> int:
    return many if full else default


# --- A: kill -9 of the probe ---------------------------------------------------------------------------------
def test_kill_probe_keeps_everything_flush_confirmed(tmp_path, full, reaper):
    master = random.Random()
    seed = master.randrange(1 << 30)
    master.seed(seed)
    # Half the trials die right after a confirmed flush (the harshest moment), half at a random time.
    plans = [(master.randint(1, 6) if trial % 2 == 0 else 0, master.uniform(0.05, 1.5), master.randrange(1 << 30))
             for trial in range(trials(full, 6))]

    def trial(i: int) -> None:
        die_after, delay, probe_seed = plans[i]
        context = f"seed {seed}, trial {i}, die_after {die_after}, delay {delay:.2f} s"
        _kill_probe_trial(reaper, tmp_path / f"trial{i}", probe_seed, die_after, delay, context)

    run_trials(trial, len(plans))


def _kill_probe_trial(reaper, directory, seed: int, die_after: int, delay: float, context: str) -> None:
    probe = reaper.probe("mixed", directory, seed, die_after)
    _, words = probe.expect("ready")
    writer = reaper.track(int(words[0]))
    if die_after:
        probe.wait(60)
    else:
        time.sleep(delay)
        os.kill(probe.pid, signal.SIGKILL)
        probe.wait(10)
    assert probe.process.returncode == -signal.SIGKILL, f"{context}: probe ended otherwise\n{probe.tail()}"
    assert gone(writer, ORPHAN_WAIT_S), f"{context}: writer {writer} still alive {ORPHAN_WAIT_S} s after the probe"
    confirmed = [line.split()[1:] for line in probe.drain() if line.startswith("flushed ")]
    events, tensors, rows = map(int, confirmed[-1]) if confirmed else (0, 0, 0)
    with asynclog.open(directory / "mixed.alog") as log:
        assert log.footer is not None and not log.complete, f"{context}: footer {log.footer}"
        assert log.footer.get("reason"), f"{context}: an incomplete footer must say why"
        _check_confirmed(log, seed, events, tensors, rows, context)


def _check_confirmed(log, seed: int, events: int, tensors: int, rows: int, context: str) -> None:
    seqs = [record["data"]["seq"] for record in log.events(name="ev")]
    assert seqs == list(range(len(seqs))), f"{context}: events out of order or with gaps"
    assert len(seqs) >= events, f"{context}: flush confirmed {events} events, the file holds {len(seqs)}"
    for index in range(tensors):
        name = f"t{index}"
        assert log.tensor_count(name) == 1, f"{context}: flush confirmed tensor {name}, the file lacks it"
        assert same_bits(log.tensor(name), tensor_value(seed, index)), f"{context}: tensor {name} differs"
    read = list(log.rows("tokens")) if "tokens" in log.stream_names() else []
    assert [row["row_id"] for row in read[:rows]] == list(range(rows)), \
        f"{context}: flush confirmed {rows} stream rows, the file holds {len(read)}"
    for row in read:
        assert row["tokens"].tolist() == row_tokens(row["row_id"]).tolist(), f"{context}: row {row['row_id']}"


# --- B: kill -9 of the writer --------------------------------------------------------------------------------
WRITER_KILL_MODES = ["running", "blocked", "closing"]


def test_kill_writer_raises_in_every_call_and_leaks_nothing(tmp_path, full, reaper):
    master = random.Random()
    seed = master.randrange(1 << 30)
    master.seed(seed)
    plans = [(WRITER_KILL_MODES[trial % len(WRITER_KILL_MODES)], master.uniform(0.0, 0.8))
             for trial in range(trials(full, 6))]

    def trial(i: int) -> tuple[str, float]:
        mode, delay = plans[i]
        context = f"seed {seed}, trial {i}, mode {mode}, delay {delay:.2f} s"
        return mode, _kill_writer_trial(reaper, tmp_path / f"trial{i}", mode, delay, context)

    latencies = run_trials(trial, len(plans))
    print("WriterError latency after kill -9 of the writer (s):", [(m, round(s, 3)) for m, s in latencies])


def _kill_writer_trial(reaper, directory, mode: str, delay: float, context: str) -> float:
    probe = reaper.probe("writer_victim", directory, mode)
    _, (writer,) = probe.expect("ready")
    writer = reaper.track(int(writer))
    probe.expect({"running": "logged", "blocked": "stopped", "closing": "closing"}[mode])
    time.sleep(delay)
    try:
        os.kill(writer, signal.SIGKILL)
    except ProcessLookupError:
        raise AssertionError(f"{context}: the writer was gone before the kill; probe:\n{probe.tail()}") from None
    killed_at = time.monotonic()
    raised_at, words = probe.expect("raised", timeout=RAISE_BOUND_S + 20)
    latency = raised_at - killed_at
    assert latency <= RAISE_BOUND_S, f"{context}: WriterError came {latency:.2f} s after the kill"
    exitcode, message = words[0], json.loads(" ".join(words[1:]))
    assert exitcode == str(-signal.SIGKILL), f"{context}: WriterError.exitcode {exitcode} ({message})"
    _, words = probe.expect("after", timeout=RAISE_BOUND_S + 20)
    later = json.loads(" ".join(words))
    # close() may return once the failure was raised; it must not hang or fail otherwise.
    expected = {name: ("WriterError", "ClosedError") for name in later} | {"close": (None, "WriterError", "ClosedError")}
    assert all(later[name] in kinds for name, kinds in expected.items()), f"{context}: later calls gave {later}"
    _, (baseline, fds, maps) = probe.expect("leaks", timeout=30)
    assert int(fds) == int(baseline), f"{context}: {int(fds) - int(baseline)} fds left open after shutdown()"
    assert int(maps) == 0, f"{context}: {maps} mappings of the staging memfd left after shutdown()"
    assert probe.wait(30) == 0, f"{context}: {probe.tail()}"
    return latency


# --- D: a forked child must not keep the writer waiting --------------------------------------------------------
def test_kill_probe_with_forked_child_still_gets_a_footer(tmp_path, reaper):
    probe = reaper.probe("forker", tmp_path)
    _, (writer, child) = probe.expect("forked")
    reaper.track(int(writer))
    reaper.track(int(child))
    time.sleep(0.3)
    os.kill(probe.pid, signal.SIGKILL)
    probe.wait(10)
    footer, deadline = None, time.monotonic() + FOOTER_WAIT_S
    while footer is None and time.monotonic() < deadline:
        time.sleep(0.05)
        footer = _footer(tmp_path / "forked.alog")
    assert footer is not None, f"no footer {FOOTER_WAIT_S} s after the probe died (its forked child lives on)"
    assert not footer["complete"] and footer["reason"]
    assert gone(int(writer), ORPHAN_WAIT_S)
    with asynclog.open(tmp_path / "forked.alog") as log:
        assert [r["name"] for r in log.events()][:1] == ["before_fork"]


def _footer(path) -> dict | None:
    try:
        with asynclog.open(path) as log:
            return log.footer
    except (asynclog.CorruptLogError, OSError, EOFError):
        return None
