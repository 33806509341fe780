"""The bench runner measures, reports real sizes, and reports peers it cannot run instead of faking them.

Tiny sizes, asynclog and the synchronous floor only: no bench extra needed, no timing thresholds.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from asynclog.bench import peers, plan, run, table
from asynclog.bench._child import tree_size
from asynclog.bench.peers import Adapter
from asynclog.bench.workloads import WORKLOADS

WORKLOADS_MEASURED = ["events", "tokens", "tensors"]
NUMERIC_COLUMNS = slice(2, 8)  # p50, p99, mean, blocked, durable, disk


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bench")
    return run("tiny", peer_keys=["asynclog", "sync"], workload_keys=WORKLOADS_MEASURED, workdir=str(workdir),
               keep=True)


def _rows(text: str) -> dict[tuple[str, str], list[str]]:
    """The table's data rows, keyed by (workload heading, peer name)."""
    rows, heading = {}, None
    for line in text.splitlines():
        if line.startswith("### "):
            heading = line[4:].split(":")[0]
        elif line.startswith("| ") and not line.startswith("| peer "):
            cols = [c.strip() for c in line.strip("|").split("|")]
            rows[(heading, cols[0])] = cols
    return rows


def _number(cell: str) -> float:
    value, _, unit = cell.partition(" ")
    return float(value.replace(",", "")) * {"": 1, "B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit]


def test_every_cell_of_asynclog_and_the_floor_is_measured(tiny):
    assert [(c.workload, c.peer, c.status) for c in tiny] == [
        (w, p, "ok") for w in WORKLOADS_MEASURED for p in ("asynclog", "sync")]
    for cell in tiny:
        f = cell.figures
        params = WORKLOADS[cell.workload].params("tiny")
        assert f["calls"] == (params.get("count") or params.get("sequences"))
        for key in ("p50_us", "p99_us", "mean_us", "blocked_s", "durable_s", "bytes", "rss_peak_mib"):
            assert f[key] > 0, (cell.workload, cell.peer, key)
        assert f["p50_us"] <= f["p99_us"] <= f["max_us"]
        assert f["blocked_s"] >= f["calls_s"]


def test_the_table_shows_measured_positive_numbers_for_each_peer(tiny):
    rows = _rows(table(tiny, "tiny"))
    for cell in tiny:
        cols = rows[(cell.workload, cell.name)]
        numbers = [_number(c) for c in cols[NUMERIC_COLUMNS]]
        assert all(n > 0 for n in numbers), cols
        assert _number(cols[7]) == pytest.approx(cell["bytes"], rel=0.01)


def test_bytes_on_disk_are_the_size_of_the_files_written(tiny):
    for cell in tiny:
        names = [n for _, _, files in os.walk(cell.directory) for n in files]
        assert names, cell.directory
        total = sum(os.path.getsize(os.path.join(root, n)) for root, _, files in os.walk(cell.directory)
                    for n in files)
        assert cell["bytes"] == total == tree_size(cell.directory)[0]
        if cell.peer == "asynclog":
            assert cell["extra"]["bytes_on_disk"] == total  # the writer's own count agrees


def test_asynclog_runs_report_its_writer_as_a_helper_process(tiny):
    assert all(c["helpers"] >= 1 for c in tiny if c.peer == "asynclog")
    assert all(c["helpers"] == 0 for c in tiny if c.peer == "sync")


def test_bench_peers_are_missing_exactly_when_their_package_is(tmp_path):
    for cell in plan(workload_keys=WORKLOADS_MEASURED):
        adapter = peers.load(cell.peer)
        absent = [m for m in adapter.requires if importlib.util.find_spec(m) is None]
        if absent:
            assert cell.status == "missing" and "asynclog[bench]" in cell.note, cell
        else:
            assert cell.status in ("run", "n/a"), cell


def test_a_peer_whose_package_is_missing_is_reported_not_faked(tmp_path, monkeypatch):
    class Ghost(Adapter):
        name = "ghost"
        requires = ("asynclog_bench_no_such_package",)
        how = {"events": "native"}

    real_load = peers.load
    monkeypatch.setitem(peers.PEERS, "ghost", "ghost:Ghost")
    monkeypatch.setattr(peers, "load", lambda key: Ghost if key == "ghost" else real_load(key))
    cells = run("tiny", peer_keys=["ghost"], workload_keys=["events"], workdir=str(tmp_path))
    assert [(c.peer, c.status, c.figures) for c in cells] == [("ghost", "missing", {})]
    assert "not installed: asynclog_bench_no_such_package" in cells[0].note
    assert "**missing**" in _rows(table(cells, "tiny"))[("events", "ghost")][2]
    assert os.listdir(tmp_path) == []  # nothing was started for it


def test_a_workload_a_peer_cannot_do_is_marked_not_applicable():
    cells = {(c.workload, c.peer): c for c in plan(["torch_save", "tensorboard"], WORKLOADS_MEASURED)}
    assert cells[("events", "torch_save")].status == "n/a"
    tb = cells[("tokens", "tensorboard")]
    assert tb.status in ("n/a", "missing")


def test_bench_command_rejects_an_unknown_workload(capsys):
    from asynclog.bench import main

    assert main(argparse.Namespace(full=False, only="events,nope")) == 3
    assert "unknown workload or peer nope" in capsys.readouterr().err


def test_only_names_workloads_and_peers_and_asynclog_is_always_the_reference():
    from asynclog.bench import selection

    assert selection("tensors,torch_save,sync") == (["tensors"], ["asynclog", "sync", "torch_save"])
    assert selection("events") == (["events"], None)
    assert selection("stdlib") == (None, ["asynclog", "stdlib"])
    assert selection(None) == (None, None)


def test_the_report_names_the_command_that_reproduces_it():
    from asynclog.bench import command_line

    args = argparse.Namespace(full=True, only="events,stdlib")
    assert command_line(args) == "asynclog bench --full --only events,stdlib"


# --- bench_core: its own sections, on the same adapters and workloads -----------------------------------------
@pytest.fixture(scope="module")
def bench_core():
    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "bench_core.py"
    spec = importlib.util.spec_from_file_location("bench_core", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_core_drives_the_shared_peer_adapters(bench_core):
    shared = {"AsyncLog": "asynclog", "SyncFloor": "sync", "StdlibQueue": "stdlib", "TorchSave": "torch_save"}
    for name, key in shared.items():
        assert getattr(bench_core, name, None) is peers.load(key), name
    own = [n for n, v in vars(bench_core).items() if isinstance(v, type) and v.__module__ == bench_core.__name__]
    assert own == [], "bench_core defines its own peers or baselines"


def test_bench_core_before_after_table_shows_each_figure_and_its_change(bench_core):
    before = {"events": {"p50_us": 2.0, "peers": {"sync": 1.0}}, "startup": {"first_start_s": 0.2}}
    after = {"events": {"p50_us": 3.0, "peers": {"sync": 1.0}}, "startup": {"first_start_s": 0.1}}
    rows = bench_core.before_after(before, after).splitlines()
    assert "| events p50_us | 2 | 3 | +50 % |" in rows
    assert "| events peers sync | 1 | 1 | 0 % |" in rows
    assert "| startup first_start_s | 0.2 | 0.1 | -50 % |" in rows


def test_bench_core_sections_measure_at_the_tiny_scale(bench_core, tmp_path):
    gate = bench_core.bench_gate(str(tmp_path), 20)
    assert 0 < gate["muted_p50_us"] and 0 < gate["accepted_p50_us"] and 0 < gate["refused_p50_us"]
    tensor = bench_core.bench_tensor(str(tmp_path), (1 << 10,), 1)
    assert tensor["1 KiB"]["asynclog_us"] > 0, tensor
    through = bench_core.bench_throughput(str(tmp_path), "tiny")
    for kind in ("records", "token_rows"):
        assert through[kind]["asynclog_per_s"] > 0 and through[kind]["sync_per_s"] > 0, through


def test_bench_core_refuses_a_section_it_does_not_have():
    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "bench_core.py"
    done = subprocess.run([sys.executable, str(path), "--only", "refusal"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown section(s) refusal" in done.stderr, done.stderr
