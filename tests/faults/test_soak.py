"""The soak (benchmarks/soak.py): real probe processes of two ranks, their writers and a dataset export after
every checkpoint, run by the script as a user would; seconds in CI, three minutes with --full.

After a warm-up, a late window of samples is held against an early one: descriptors, threads, writer
processes and staging memory may not grow at all, /dev/shm may hold nothing of theirs after any checkpoint, RSS
may grow by a bounded amount per checkpoint; every run reads back with exactly what was logged. The second
test makes the probe processes leak and sees the soak say so, which is what makes the first one worth passing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .workload import REPO_DIR

SOAK = os.path.join(REPO_DIR, "benchmarks", "soak.py")
NO_GROWTH = ("fds", "threads", "processes", "staging", "shm_entries", "shm_bytes")
SHORT = ["--seconds", "0", "--warmup", "2"]  # the fewest checkpoints that give two windows after the warm-up


def _soak(tmp_path, *argv: str) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, SOAK, "--out", str(tmp_path / "soak"), "--json", str(report), *argv],
                          capture_output=True, text=True, timeout=1200)
    assert report.exists(), done.stderr[-3000:]
    return done, json.loads(report.read_text())


def _failing(report: dict) -> set[tuple[str, str]]:
    return {(row["figure"], row["process"]) for row in report["rows"] if not row["held"]}


def test_a_sweep_of_checkpoints_keeps_resources_flat_and_loses_nothing(tmp_path, full):
    done, report = _soak(tmp_path, *(["--minutes", "3"] if full else [*SHORT, "--check-every", "3"]))
    assert report["problems"] == [], done.stdout[-5000:]
    assert done.returncode == 0
    assert report["levels"]["standard"] >= 3 and report["levels"]["debug"] >= 3
    processes = {row["process"] for row in report["rows"]}
    assert {"probe 0", "probe 1", "writers 0", "writers 1"} <= processes
    for row in report["rows"]:
        if row["figure"] in NO_GROWTH:
            assert row["late"] <= row["early"], row
    assert all(sample["shm_entries"] == 0 for sample in report["samples"])
    writers = [sample["figures"]["writers 0"]["processes"] for sample in report["samples"]]
    assert writers[-1] == 2  # one per level's pool, started once, kept for the sweep


# 1 MiB a checkpoint outgrows the allocator's 2 MiB of slack only over more checkpoints than a descriptor needs.
@pytest.mark.parametrize("leak, figure, checkpoints", [("fd", "fds", 6), ("thread", "threads", 6),
                                                       ("memory", "rss", 12)])
def test_the_soak_catches_a_probe_that_leaks_every_checkpoint(tmp_path, full, leak, figure, checkpoints):
    if leak != "fd" and not full:
        pytest.skip("a thread and memory leak with --full")
    done, report = _soak(tmp_path, *SHORT, "--min-checkpoints", str(checkpoints), "--ranks", "1",
                         "--check-every", "0", "--export-every", "0", "--leak", leak)
    assert done.returncode == 1
    assert _failing(report) == {(figure, "probe 0")}, done.stdout[-3000:]
