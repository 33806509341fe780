"""The runner: decides each (workload, peer) cell, runs the cells one at a time, and samples the memory of
the helper processes a peer starts (asynclog's writer, wandb's service) from outside.

Each peer runs in a subprocess of its own, its workloads one after the other (asynclog reuses its writer
process across runs, as a sweep does). The demo workload logs through DetailedLogger (asynclog) alone, so it
runs for asynclog and for the probe with no logger.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import psutil

from asynclog.bench import peers
from asynclog.bench.workloads import SCALES, WORKLOADS
from asynclog.probe.progress import Status

__all__ = ["Cell", "plan", "run"]

TIMEOUT_S = {"tiny": 120.0, "short": 120.0, "full": 300.0}  # per workload
_SAMPLE_S = 0.02


@dataclass
class Cell:
    """One peer on one workload: what was done (``how``) and what was measured (``figures``)."""

    workload: str
    peer: str
    name: str
    status: str  # ok, missing, n/a, error, timeout
    how: str = ""
    note: str = ""
    figures: dict = field(default_factory=dict)
    directory: str | None = None

    def __getitem__(self, key: str):
        return self.figures.get(key)


def plan(peer_keys: list[str] | None = None, workload_keys: list[str] | None = None) -> list[Cell]:
    """Every cell the run will have, with the ones that cannot run (missing, n/a) already decided."""
    peer_keys = list(peer_keys or peers.PEERS)
    cells = []
    for workload in workload_keys or list(WORKLOADS):
        if workload not in WORKLOADS:
            raise ValueError(f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")
        if workload == "demo":
            if "asynclog" in peer_keys:
                for key, name, how in (("asynclog", "asynclog", "DetailedLogger, debug"),
                                       ("off", "logging off", "logger=None")):
                    cells.append(Cell(workload, key, name, "run", how))
            continue
        for key in peer_keys:
            adapter = peers.load(key)
            cell = Cell(workload, key, adapter.name, "run", adapter.how.get(workload, ""))
            absent = peers.missing(adapter)
            if absent:
                cell.status, cell.note = "missing", f"not installed: {', '.join(absent)} (pip install asynclog[bench])"
            elif workload not in adapter.how:
                cell.status, cell.note = "n/a", adapter.not_applicable.get(workload, "not supported")
            cells.append(cell)
    return cells


def run(scale: str = "short", peer_keys: list[str] | None = None, workload_keys: list[str] | None = None,
        workdir: str | None = None, keep: bool = False, timeout_s: float | None = None,
        progress=None) -> list[Cell]:
    """Run every runnable cell and return all cells: one subprocess per peer, its workloads in turn.

    ``workdir`` holds each cell's output folder; with ``keep`` the folders stay (tests compare their sizes).
    ``timeout_s`` bounds each workload; one that runs over is killed, reported, and the peer's process
    restarted for the workloads after it. ``progress`` is called with each finished cell. On a terminal,
    stderr shows which peer and workload is running (``asynclog.probe.progress.Status``).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, not {scale!r}")
    cells = plan(peer_keys, workload_keys)
    root = workdir or tempfile.mkdtemp(prefix="asynclog-bench-")
    os.makedirs(root, exist_ok=True)
    timeout = timeout_s or TIMEOUT_S[scale]
    try:
        for peer in dict.fromkeys(c.peer for c in cells):
            mine = [c for c in cells if c.peer == peer]
            todo = [c for c in mine if c.status == "run"]
            with Status() as status:
                while todo:
                    _run_peer(peer, todo, scale, root, timeout, status)
                    todo = [c for c in todo if c.status == "run"]
            for cell in mine:
                if not keep and cell.directory:
                    shutil.rmtree(cell.directory, ignore_errors=True)
                    shutil.rmtree(cell.directory + ".wandb-home", ignore_errors=True)
                    cell.directory = None
                if progress is not None:
                    progress(cell)
    finally:
        if workdir is None and not keep:
            shutil.rmtree(root, ignore_errors=True)
    return cells


def _run_peer(peer: str, cells: list[Cell], scale: str, root: str, timeout: float, status: Status) -> None:
    """One subprocess for ``peer`` running ``cells`` in order; fills each cell it finished or that broke it."""
    jobs = []
    for cell in cells:
        cell.directory = os.path.join(root, f"{cell.workload}-{peer}")
        shutil.rmtree(cell.directory, ignore_errors=True)
        os.makedirs(cell.directory)
        with contextlib.suppress(FileNotFoundError):
            os.remove(cell.directory + ".json")
        jobs.append({"workload": cell.workload, "params": WORKLOADS[cell.workload].params(scale),
                     "directory": cell.directory, "result": cell.directory + ".json"})
    phase_file = os.path.join(root, f"{peer}.phase")
    with open(phase_file, "w"):
        pass
    spec = {"peer": peer, "phase_file": phase_file, "jobs": jobs}
    out_path = os.path.join(root, f"{peer}.out")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(out_path, "ab") as out:
        child = subprocess.Popen([sys.executable, "-m", "asynclog.bench._child", json.dumps(spec)],
                                 stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        watch = _watch(child, phase_file, timeout,
                       lambda workload: status.show(f"asynclog bench: {peer}, {workload}"))
    for cell in cells:
        try:
            with open(cell.directory + ".json", encoding="utf-8") as f:
                result = json.load(f)
        except (OSError, ValueError):
            result = None
        if cell.workload == watch.killed_in:
            result = result or {}
            result["status"] = "timeout"
            if "close_started_s" in result:
                # The calls were measured; the close ran until the kill, so blocking was at least this long.
                result["blocked_s_min"] = result["calls_s"] + timeout - result["close_started_s"]
                result["note"] = f"close still running when killed, {timeout:g} s into the workload"
            else:
                result["note"] = f"killed after {timeout:g} s, still logging"
        elif result is not None and result["status"] == "timeout":  # died inside close, not killed by us
            result = {"status": "error", "note": f"exit code {child.returncode} during close: {_tail(out_path)}"}
        elif result is None:
            if watch.killed_in is not None:
                continue  # not reached before the kill: the next process runs it
            else:
                result = {"status": "error", "note": f"exit code {child.returncode}: {_tail(out_path)}"}
        cell.status = result.pop("status")
        cell.note = result.pop("note", "") or cell.note
        result.pop("traceback", None)
        helper = watch.helpers.get(cell.workload, (0, 0))
        result["helper_peak_mib"], result["helpers"] = helper[0] / 2**20, helper[1]
        cell.figures = result


@dataclass
class _Watch:
    helpers: dict = field(default_factory=dict)  # workload -> (peak summed RSS of helpers, helpers seen)
    killed_in: str | None = None


def _watch(child: subprocess.Popen, phase_file: str, timeout: float, on_workload) -> _Watch:
    """Wait for ``child``, sampling the summed RSS of its descendants and charging it to the running workload.

    A workload that runs longer than ``timeout`` has the child (and its helpers) killed. ``on_workload`` is
    called with each workload's name as it begins.
    """
    watch = _Watch()
    phase, since = "", time.monotonic()
    seen: dict[str, set] = {}
    try:
        proc = psutil.Process(child.pid)
    except psutil.NoSuchProcess:
        proc = None
    while child.poll() is None:
        try:
            with open(phase_file, encoding="utf-8") as f:
                now = f.read()
        except OSError:
            now = phase
        if now != phase:
            phase, since = now, time.monotonic()
            if phase:
                on_workload(phase)
        if phase and time.monotonic() - since > timeout:
            watch.killed_in = phase
            _kill_tree(child)
            break
        if phase and proc is not None:
            total = 0
            try:
                for helper in proc.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        total += helper.memory_info().rss
                        seen.setdefault(phase, set()).add(helper.pid)
            except psutil.Error:
                pass
            peak = watch.helpers.get(phase, (0, 0))[0]
            watch.helpers[phase] = (max(peak, total), len(seen.get(phase, ())))
        time.sleep(_SAMPLE_S)
    return watch


def _kill_tree(child: subprocess.Popen) -> None:
    """Kill the child this runner started and the helpers it started, by pid."""
    try:
        helpers = psutil.Process(child.pid).children(recursive=True)
    except psutil.Error:
        helpers = []
    child.kill()
    child.wait()
    for helper in helpers:
        try:
            helper.kill()
        except psutil.Error:
            pass


def _tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read().strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-400:]
