"""Signals to the probe's whole process group (a terminal's Ctrl-C, a job scheduler's SIGTERM): the probe's
own handler must still be able to log its last event and close the run; the writer must not die first."""

from __future__ import annotations

import os
import signal

import pytest

import asynclog
from faults.workload import gone, reaper  # noqa: F401 - reaper is a fixture


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_group_signal_lets_the_probe_close_its_run(tmp_path, reaper, signame):
    probe = reaper.probe("group_signal", tmp_path, signame, new_session=True)
    _, (writer,) = probe.expect("ready")
    writer = reaper.track(int(writer))
    os.killpg(probe.pid, getattr(signal, signame))
    probe.wait(30)
    lines = probe.drain()
    assert "closed" in lines, f"the handler's close() did not return: {lines[-3:]}\n{probe.tail()}"
    assert gone(writer, 10.0), "the writer outlived the probe"
    with asynclog.open(tmp_path / "group.alog") as log:
        assert log.complete, log.footer
        names = [record["name"] for record in log.events()]
    assert names[-1] == "bye" and names.count("step") > 200
