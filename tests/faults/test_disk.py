"""A full disk (a real 20 MiB tmpfs): the run's next call fails soon, clearly, and the writer serves on."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

import asynclog
from faults.workload import reaper  # noqa: F401 - reaper is a fixture


@pytest.fixture
def small_disk(tmp_path):
    """A 20 MiB tmpfs mounted in a temporary directory (needs root), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=30)


def test_full_disk_fails_the_next_call_and_the_writer_serves_on(small_disk, tmp_path, reaper):
    other_dir = tmp_path / "other"
    probe = reaper.probe("fill_disk", small_disk, other_dir)
    _, words = probe.expect("outcome", timeout=90)
    outcome = json.loads(" ".join(words))
    assert outcome["error"] is not None, (
        f"no WriterError {outcome['seconds']:.1f} s and {outcome['calls']} calls after the file stopped growing "
        f"at {outcome['size']} bytes")
    path = str(small_disk / "full.alog")
    assert path in outcome["error"], outcome["error"]
    assert "ENOSPC" in outcome["error"] or "No space left" in outcome["error"], outcome["error"]
    _, (same_writer,) = probe.expect("other-closed", timeout=30)
    assert same_writer == "1", "the run on a healthy disk should keep the writer it started with"
    probe.wait(30)
    with asynclog.open(other_dir / "other.alog") as log:
        assert log.complete and len(list(log.events(name="after"))) == 10
    with asynclog.open(path) as log:
        seqs = [record["data"]["seq"] for record in log.events(name="ev")]
    assert seqs == list(range(len(seqs))) and 0 < len(seqs) <= outcome["logged"]
