"""After the run: what the tools (``ls``, ``sweep``, ``show``, ``plot``, ``export``, ``asynclog.open``) make of
hostile things around a log: FIFOs where a sidecar, a manifest or a shard should be, sidecars of the wrong
types or nested 200,000 deep, manifests that claim any world size, file names that are not UTF-8.

Whatever is on disk, every tool ends (a FIFO is never opened for a blocking read), prints no traceback, and
names the run it could not read as damaged, with why, while every other run reads as before. The tools run
as the user runs them, in their own process; a timeout around each is only a hang detector. The random part
(``test_random_sidecars_...``) runs a few dozen cases in CI and hundreds with ``--full``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import asynclog
from asynclog import _ranks as ranks

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HANG_S = float(os.environ.get("ASYNCLOG_TEST_HANG_S", 120))  # far beyond any of these commands' run time


def tool(*args: str) -> subprocess.CompletedProcess:
    """``asynclog ARGS`` in its own process; a failure naming the command if it has not ended in HANG_S."""
    try:
        return subprocess.run([sys.executable, "-m", "asynclog", *args], cwd=ROOT, capture_output=True,
                              timeout=HANG_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"asynclog {' '.join(args)} hung (no end within {HANG_S:g} s)")


def opened(path) -> subprocess.CompletedProcess:
    """``asynclog.open(path)`` in its own process, every record read; prints ``complete`` or the error."""
    code = ("import sys, asynclog\n"
            "try:\n"
            "    with asynclog.open(sys.argv[1]) as log:\n"
            "        list(log.events())\n"
            "        print('complete' if log.complete else 'incomplete: ' + '; '.join(getattr(log, 'problems', [])))\n"
            "except (OSError, asynclog.CorruptLogError) as exc:\n"
            "    print(type(exc).__name__, exc)\n")
    try:
        return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=HANG_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"asynclog.open({str(path)!r}) hung (no end within {HANG_S:g} s)")


def no_traceback(done: subprocess.CompletedProcess) -> str:
    err = done.stderr.decode(errors="replace")
    assert "Traceback" not in err, err[-3000:]
    return err


def rows(done: subprocess.CompletedProcess) -> dict[str, dict]:
    no_traceback(done)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return {os.path.basename(r["path"]): r for r in json.loads(done.stdout)}


# --- runs to surround with hostile things -------------------------------------------------------------------
def plain_run(folder, name: str) -> str:
    with asynclog.start(folder, name=name) as run:
        run.event("core_results", deltaH1=0.5)
    return run.path


def rank_run(folder, name: str, world: int = 2) -> str:
    for rank in range(world):
        with asynclog.start(folder, name=name, rank=rank, world_size=world) as run:
            run.event("core_results", deltaH1=0.5, rank=rank)
    return os.path.join(folder, name)


SUMMARY = {"level": "standard", "complete": True, "run_metadata": {"checkpoint_path": "/ckpt/step_60/model",
                                                                    "local_time": "2024-05-01T10:00:00"},
           "core_results": {"deltaH1": 0.25}, "timing": {"total_time": 1.5}, "stats": {}}


def with_summary(log: str, summary) -> None:
    body = summary if isinstance(summary, bytes) else json.dumps(summary).encode()
    with open(log.removesuffix(".alog") + "_summary.json", "wb") as f:
        f.write(body)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> str:
    """A closed plain run with a summary, to copy."""
    path = plain_run(tmp_path_factory.mktemp("good"), "good")
    with_summary(path, SUMMARY)
    return path


def copy_run(good: str, folder, name: str) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name + ".alog")
    shutil.copyfile(good, path)
    return path


# --- 5. FIFOs and other things that are not regular files ------------------------------------------------------
def _fifo(path) -> None:
    if os.path.lexists(path):
        os.unlink(path)
    os.mkfifo(path)


def fifo_summary(sweep, good) -> tuple[str, str]:
    log = copy_run(good, sweep, "piped")
    _fifo(os.path.join(sweep, "piped_summary.json"))
    return log, "piped.alog"


def fifo_manifest_of_a_run_folder(sweep, good) -> tuple[str, str]:
    folder = rank_run(sweep, "job")
    _fifo(os.path.join(folder, "manifest.json"))
    return folder, "job"


def fifo_manifest_in_a_subfolder(sweep, good) -> tuple[str, str]:
    folder = os.path.join(sweep, "deeper", "notes")
    os.makedirs(folder)
    _fifo(os.path.join(folder, "manifest.json"))
    return copy_run(good, folder, "beside"), "beside.alog"


def fifo_shard(sweep, good) -> tuple[str, str]:
    folder = rank_run(sweep, "job")
    _fifo(os.path.join(folder, "rank-00001.alog"))
    return folder, "job"


def fifo_log(sweep, good) -> tuple[str, str]:
    path = os.path.join(sweep, "pipe.alog")
    _fifo(path)
    return path, None


FIFOS = {"summary": fifo_summary, "manifest of a run folder": fifo_manifest_of_a_run_folder,
         "manifest in a subfolder": fifo_manifest_in_a_subfolder, "shard": fifo_shard, "log": fifo_log}


@pytest.fixture(params=list(FIFOS))
def fifo_sweep(request, tmp_path, good):
    """A sweep of a good run and a run surrounded by a FIFO: (sweep folder, the run's path, its name in ls)."""
    sweep = tmp_path / "sweep"
    copy_run(good, sweep, "fine")
    target, listed = FIFOS[request.param](str(sweep), good)
    return str(sweep), target, listed, request.param


def test_a_fifo_where_a_file_should_be_hangs_no_listing(fifo_sweep):
    sweep, target, listed, what = fifo_sweep
    found = rows(tool("ls", sweep, "--json"))
    assert found["fine.alog"]["status"] == "complete"
    if listed is not None and what != "manifest in a subfolder":
        assert found[listed]["status"] in ("damaged", "incomplete")
        assert "not a regular file" in found[listed]["reason"], found[listed]
    swept = tool("sweep", sweep, "--json", "--no-index")
    assert rows(swept).keys() == found.keys()


def test_a_fifo_where_a_file_should_be_hangs_no_reading_of_the_run(fifo_sweep):
    sweep, target, listed, what = fifo_sweep
    shown = tool("show", target)
    no_traceback(shown)
    if what != "log":
        assert shown.returncode == 0 and b"not a regular file" in shown.stdout or what.startswith("manifest in")
    read = opened(target)
    no_traceback(read)
    if what in ("shard", "log", "manifest of a run folder"):
        assert b"not a regular file" in read.stdout, read.stdout
    else:
        assert read.stdout.strip() == b"complete"


def test_a_fifo_where_a_file_should_be_hangs_no_plot_or_export(fifo_sweep, tmp_path):
    sweep, target, listed, what = fifo_sweep
    done = {"plot sweep": tool("plot", sweep, "-o", str(tmp_path / "sweep_png")),
            "plot run": tool("plot", target, "-o", str(tmp_path / "run_png")),
            "export run": tool("export", target, "--to", "jsonl", "-o", str(tmp_path / "one")),
            "export dataset": tool("export", sweep, "--dataset", str(tmp_path / "dataset"))}
    for command in done.values():
        no_traceback(command)
    if what == "log":
        assert b"not a regular file" in done["plot run"].stderr and b"not a regular file" in done["export run"].stderr


# --- 6. sidecars of the wrong types, too deep, too large ---------------------------------------------------------
DEEP = b'{"results": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
BAD_SUMMARIES = {
    "checkpoint_path is a number": ({"run_metadata": {"checkpoint_path": 5}}, "checkpoint_path"),
    "timing is text": ({"timing": "x"}, "timing"),
    "environment is text": ({"run_metadata": {"environment": "x"}}, "environment"),
    "command is a number": ({"run_metadata": {"command": 5}}, "command"),
    "ground truth is a list": ({"ground_truth": [1]}, "ground_truth"),
    "logging cost is text": ({"logging_cost": "x"}, "logging_cost"),
    "probe seconds are text": ({"logging_cost": {"probe_seconds": "x", "fraction_of_run": 0.1}}, "probe_seconds"),
    "nested 200,000 deep": (DEEP, "deep"),
    "a list": ([1, 2], "object"),
}


@pytest.fixture(scope="module")
def bad_summaries(tmp_path_factory, good) -> str:
    sweep = tmp_path_factory.mktemp("summaries")
    copy_run(good, sweep, "fine")
    with_summary(os.path.join(sweep, "fine.alog"), SUMMARY)
    for k, (summary, _) in enumerate(BAD_SUMMARIES.values()):
        with_summary(copy_run(good, sweep, f"bad{k}"), summary)
    return str(sweep)


def test_a_summary_of_the_wrong_types_makes_its_run_damaged_and_no_other(bad_summaries):
    found = rows(tool("ls", bad_summaries, "--json"))
    assert found["fine.alog"]["status"] == "complete" and found["fine.alog"]["deltaH1"] == 0.25
    for k, (what, (_, why)) in enumerate(BAD_SUMMARIES.items()):
        row = found[f"bad{k}.alog"]
        assert row["status"] == "damaged" and "bad%d_summary.json" % k in row["reason"], (what, row)
        assert why in row["reason"], (what, row)
    assert rows(tool("sweep", bad_summaries, "--json", "--no-index")) == found


@pytest.mark.parametrize("what", list(BAD_SUMMARIES))
def test_show_of_a_run_with_a_bad_summary_says_damaged_and_why(what, bad_summaries):
    k = list(BAD_SUMMARIES).index(what)
    for args in ((), ("--json",)):
        done = tool("show", os.path.join(bad_summaries, f"bad{k}.alog"), *args)
        no_traceback(done)
        assert done.returncode == 0 and b"damaged" in done.stdout and f"bad{k}_summary.json".encode() in done.stdout


def test_plot_and_dataset_export_pass_over_bad_summaries(bad_summaries, tmp_path):
    plotted = tool("plot", bad_summaries, "-o", str(tmp_path / "png"))
    no_traceback(plotted)
    assert plotted.returncode == 0 and os.path.exists(tmp_path / "png" / "sweep.png")
    exported = tool("export", bad_summaries, "--dataset", str(tmp_path / "dataset"))
    no_traceback(exported)
    assert exported.returncode == 0, exported.stderr


BAD_WORLDS = {"text": "abc", "null": None, "a list": [2], "a float": 1e8, "a hundred million": 100_000_000,
              "negative": -1, "zero": 0, "true": True}


@pytest.mark.parametrize("what", list(BAD_WORLDS))
def test_a_manifest_whose_world_size_is_not_a_world_makes_its_run_damaged(what, tmp_path):
    folder = rank_run(tmp_path / "sweep", "job")
    path = os.path.join(folder, "manifest.json")
    with open(path, "rb") as f:
        manifest = json.load(f)
    manifest["world_size"] = BAD_WORLDS[what]
    with open(path, "w") as f:
        json.dump(manifest, f)
    found = rows(tool("ls", str(tmp_path / "sweep"), "--json"))
    assert list(found) == ["job"], found  # still one run: its shards are not listed as runs of their own
    assert found["job"]["status"] == "damaged" and "world_size" in found["job"]["reason"], found["job"]
    read = opened(folder)
    no_traceback(read)
    assert b"world_size" in read.stdout


def test_a_manifest_of_fifty_thousand_ranks_is_read_and_the_missing_ranks_named_in_a_line(tmp_path):
    """What a real 50,000-rank job's rank 0 writes (1.15 MB) is a run folder, not rank 0 as a run of its own;
    the ranks whose shards never came are named as ranges."""
    with asynclog.start(tmp_path, name="huge", rank=0, world_size=50_000) as run:
        run.event("core_results", deltaH1=0.5)
    assert os.path.getsize(tmp_path / "huge" / "manifest.json") > 1 << 20
    found = rows(tool("ls", str(tmp_path), "--json"))
    assert list(found) == ["huge"]
    assert found["huge"]["status"] == "incomplete"
    assert found["huge"]["reason"] == "ranks 1-49999 (49999 of 50000): no shard", found["huge"]
    with asynclog.open(tmp_path / "huge") as log:
        assert log.ranks == [0] and log.problems == ["ranks 1-49999 (49999 of 50000): no shard"]


def test_a_manifest_that_is_not_json_or_too_deep_makes_its_run_damaged(tmp_path):
    cases = (("torn", b'{"format": "asynclog.shards/1", "world_'), ("deep", DEEP),
             ("mistyped then not json", b'{"name": [1], "format": "asynclog.shards/1", "world_size": 2, "x": NaN}'))
    for name, body in cases:
        folder = rank_run(tmp_path / "sweep", name)
        with open(os.path.join(folder, "manifest.json"), "wb") as f:
            f.write(body)
    found = rows(tool("ls", str(tmp_path / "sweep"), "--json"))
    assert sorted(found) == ["deep", "mistyped then not json", "torn"], found
    assert all(r["status"] == "damaged" and "manifest.json" in r["reason"] for r in found.values()), found


# --- 10. names that are not UTF-8 ------------------------------------------------------------------------------
def test_a_file_name_that_is_not_utf8_is_listed_by_every_output_of_ls_and_sweep(good, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    shutil.copyfile(good, os.path.join(os.fsencode(sweep), b"caf\xe9.alog"))
    shutil.copyfile(good, sweep / "plain.alog")
    for args in (("ls", "--json"), ("sweep", "--json"), ("ls",), ("sweep",), ("sweep", "--csv")):
        done = tool(args[0], str(sweep), *args[1:])
        no_traceback(done)
        shown = b"caf\\\\xe9.alog" if "--json" in args else b"caf\\xe9.alog"  # JSON escapes the backslash
        assert done.returncode == 0 and shown in done.stdout and b"plain.alog" in done.stdout, (args, done.stdout)
    listed = json.loads(tool("ls", str(sweep), "--json").stdout)
    assert sorted(os.path.basename(r["path"]) for r in listed) == ["caf\\xe9.alog", "plain.alog"]
    assert all(r["status"] == "complete" for r in listed)


# --- random sidecars: every key the tools read, every JSON type -------------------------------------------------
_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats() | st.text(max_size=8),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=8)
_PLACES = ["level", "complete", "reason", "stats", "core_results", "core_results.deltaH1", "ground_truth",
           "ground_truth.diagnostics", "ground_truth.diagnostics.ESS", "timing", "timing.total_time",
           "logging_cost", "logging_cost.probe_seconds", "logging_cost.fraction_of_run",
           "logging_cost.start_seconds", "batch_statistics", "batch_statistics.E_batch", "run_metadata",
           "run_metadata.checkpoint_path", "run_metadata.checkpoint_name", "run_metadata.local_time",
           "run_metadata.command", "run_metadata.environment", "run_metadata.environment.cuda_available",
           "results"]


def _placed(place: str, value):
    summary = json.loads(json.dumps(SUMMARY))
    *parents, key = place.split(".")
    at = summary
    for parent in parents:
        if not isinstance(at.get(parent), dict):
            at[parent] = {}
        at = at[parent]
    at[key] = value
    return summary


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(place=st.sampled_from(_PLACES), value=_VALUES)
def test_random_sidecars_are_read_or_named_damaged_never_raised(good, tmp_path, place, value):
    """The summary with any JSON value at a key the tools read: ``ls``'s row, ``show``'s text and JSON, the
    sweep plot's point are made, or the run is damaged naming the summary (in this process)."""
    from asynclog.tools import analysis as analysis
    from asynclog.tools import plots as plots

    folder = tmp_path / "random"
    log = copy_run(good, folder, "run")
    with_summary(log, _placed(place, value))
    facts = analysis.read_run(log)
    row = analysis.row(facts)
    warnings = analysis.warnings_for(facts)
    analysis.describe(facts, warnings)
    msgspec.json.encode({"row": row, "summary": facts.summary, "header": facts.header})
    if facts.status == "damaged":
        assert "run_summary.json" in facts.reason
    else:
        assert row["status"] == "complete"
        if isinstance(facts.summary, dict):
            plots._point(facts)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(key=st.sampled_from(["format", "name", "world_size", "created", "shards"]), value=_VALUES)
def test_random_manifests_are_read_or_named_damaged_never_raised(tmp_path_factory, key, value):
    from asynclog.tools import analysis as analysis

    folder = tmp_path_factory.mktemp("manifest")
    for rank in range(2):
        with asynclog.start(folder, name="job", rank=rank, world_size=2):
            pass
    path = folder / "job" / ranks.MANIFEST
    manifest = json.loads(path.read_text())
    manifest[key] = value
    path.write_text(json.dumps(manifest))
    found = analysis.rows_below(folder, use_index=False)
    assert len(found) <= 1 or key == "format", found
    for row in found:
        assert row["status"] in ("complete", "damaged"), row
