"""`asynclog ls`, `show`, `sweep` and `asynclog.scan` over a folder of real runs: DetailedLogger runs, plain
`asynclog.start` runs, a probe killed with SIGKILL, a run that dropped records, and damaged files."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys

import pytest
import torch

import asynclog
from asynclog import DetailedLogger
from asynclog import _format as fmt
from conftest import SMALL, Stopped, adapter_sweep, old_adapter_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# checkpoint -> (deltaH1, deltaH_true, ESS); the E batch has 16 sequences, so the default ESS floor is 1.6
PROBE_RUNS = {"step_10": (3e-4, 2e-4, 12.0), "step_2": (1e-4, 1.5e-4, 1.0), "step_30": (2e-4, 2.5e-4, 9.0)}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asynclog", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def analysis():
    """The module under test, imported where it is used (so each test fails alone without it)."""
    import asynclog.tools.analysis

    return asynclog.tools.analysis


def make_batch(B: int, G: int, nan_reward: bool = False) -> dict:
    g = torch.Generator().manual_seed(B * G)
    batch = {"sequences": torch.randint(3, 100, (B, G, 12), generator=g), "attention_masks": torch.ones(B, G, 12),
             "prompt_lens": [4] * B, "rewards": torch.rand(B, G, generator=g)}
    if nan_reward:
        batch["rewards"][0, 0] = math.nan
    batch["advantages"] = batch["rewards"] - 0.5
    return batch


def probe_run(out, checkpoint: str, nan_reward: bool = False) -> str:
    deltaH1, deltaH_true, ess = PROBE_RUNS[checkpoint]
    config = {"detailed_logging": {"enabled": True, "level": "standard", "output_directory": str(out),
                                   "max_files": 0}}
    logger = DetailedLogger(config)
    logger.log_run_start(f"/ckpts/sweep/{checkpoint}", config)
    for phase in ("phase1_sum_X", "phase5_importance"):
        logger.log_phase_start(phase)
        logger.log_phase_end(phase)
    logger.log_batch_data("E_batch", make_batch(16, 1))
    logger.log_batch_data("U_batch", make_batch(4, 2, nan_reward))
    logger.log_ground_truth_results({"deltaH_true": deltaH_true, "diagnostics": {"ESS": ess, "w_max": 2.5}})
    logger.log_core_results({"deltaH1": deltaH1, "bars_dot": 0.5, "learning_rate": 1e-5, "B_E": 16})
    return logger.finalize_log({})


KILLED_PROBE = """
import os, sys, time, asynclog
from asynclog import DetailedLogger
config = {"detailed_logging": {"enabled": True, "level": "standard", "output_directory": sys.argv[1], "max_files": 0}}
logger = DetailedLogger(config)
print(logger.log_run_start("/ckpts/sweep/step_99", config), flush=True)
logger.log_core_results({"deltaH1": 0.25})
# once another run's open is answered, the writer holds everything handed over before it
asynclog.start(os.path.join(sys.argv[1], "barrier"), name="barrier", config=logger.engine_config).close()
print("ready", flush=True)
time.sleep(120)
"""


def killed_probe_run(out) -> str:
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PROBE, str(out)], stdout=subprocess.PIPE, text=True)
    path = proc.stdout.readline().strip()
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    summary = path.removesuffix(".alog") + "_summary.json"
    for _ in range(600):  # the writer notices the probe's death, writes the footer, then the summary
        if os.path.exists(summary):
            break
        subprocess.run(["sleep", "0.05"])
    return path


def plain_runs(out) -> tuple[str, str]:
    run = asynclog.start(out, name="notes")
    run.event("step", i=1)
    run.close()
    dropping = asynclog.start(out, name="dropping", config={**SMALL, "policy": "drop", "queue_batches": 3})
    with Stopped(dropping):
        for i in range(400):
            dropping.event("e", i=i, payload="x" * 2000)
    dropping.close()
    assert dropping.result["stats"]["dropped_records"] > 0
    return run.path, dropping.path


def damaged_copies(good: str, folder) -> dict[str, str]:
    """Copies of a good log: footer flipped, header frame flipped, trailer cut off; and a file that is no log."""
    os.makedirs(folder)
    paths = {what: os.path.join(folder, f"{what}.alog") for what in ("footer", "header", "cut", "junk")}
    with open(good, "rb") as f:
        data = bytearray(f.read())
    with open(good, "rb") as f:
        footer = fmt.read_trailer(f)
    for what, at in (("footer", footer + fmt.HEADER_SIZE + 3), ("header", fmt.PREAMBLE_SIZE + fmt.HEADER_SIZE + 3)):
        flipped = bytearray(data)
        flipped[at] ^= 0xFF
        with open(paths[what], "wb") as f:
            f.write(flipped)
    with open(paths["cut"], "wb") as f:
        f.write(data[: -fmt.TRAILER_SIZE])
    with open(paths["junk"], "w") as f:
        f.write("not a log, whatever its name says\n")
    return paths


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    paths = {ckpt: probe_run(out / "probe", ckpt, nan_reward=ckpt == "step_30") for ckpt in PROBE_RUNS}
    paths["step_99"] = killed_probe_run(out / "probe")
    paths["notes"], paths["dropping"] = plain_runs(out / "plain")
    paths.update(damaged_copies(paths["step_10"], out / "broken"))
    shutil.rmtree(out / "probe" / "barrier")
    return out, paths


def rows_by_path(out) -> dict[str, dict]:
    done = cli("ls", str(out), "--json")
    assert done.returncode == 0, done.stderr
    return {r["path"]: r for r in json.loads(done.stdout)}


# --- ls -----------------------------------------------------------------------------------------------------
def test_ls_prints_one_line_per_run_with_checkpoint_status_and_results(runs):
    out, paths = runs
    done = cli("ls", str(out))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 + len(paths)
    assert lines[0].split()[:9] == ["date", "time", "checkpoint", "level", "status", "size", "δH₁", "δH_true", "ESS"]
    line = next(x for x in lines if x.rstrip().endswith(paths["step_10"]))
    assert line.split()[2:5] == ["step_10", "standard", "complete"]
    assert "0.0003" in line.split() and "0.0002" in line.split() and "12" in line.split()
    killed = next(x for x in lines if paths["step_99"] in x)
    assert "incomplete" in killed and "probe process ended" in killed


def test_ls_takes_probe_runs_from_their_summaries(runs):
    out, paths = runs
    rows = rows_by_path(out)
    for ckpt, (deltaH1, deltaH_true, ess) in PROBE_RUNS.items():
        r = rows[paths[ckpt]]
        assert (r["checkpoint"], r["status"], r["level"]) == (ckpt, "complete", "standard")
        assert (r["deltaH1"], r["deltaH_true"], r["ESS"], r["w_max"]) == (deltaH1, deltaH_true, ess, 2.5)
        assert r["size"] == os.path.getsize(paths[ckpt]) and r["dropped"] == 0
        with open(paths[ckpt].removesuffix(".alog") + "_summary.json") as f:
            summary = json.load(f)
        assert r["date"] + "T" + r["time"] == summary["run_metadata"]["local_time"]
        assert r["config_hash"] == summary["run_metadata"]["config_hash"]


def test_ls_shows_what_header_and_footer_say_of_a_plain_run(runs):
    out, paths = runs
    rows = rows_by_path(out)
    notes, dropping = rows[paths["notes"]], rows[paths["dropping"]]
    with asynclog.open(paths["notes"]) as log:
        assert (notes["checkpoint"], notes["level"]) == (log.header["name"], log.header["level"])
    assert notes["status"] == "complete" and notes["deltaH1"] is None and notes["dropped"] == 0
    assert notes["date"] is not None and notes["time"] is not None
    with asynclog.open(paths["dropping"]) as log:
        assert dropping["dropped"] == log.footer["stats"]["dropped_records"] > 0


def test_ls_marks_damaged_files_and_runs_without_a_footer(runs):
    out, paths = runs
    rows = rows_by_path(out)
    for what in ("footer", "header"):
        assert rows[paths[what]]["status"] == "damaged"
        assert "checksum" in rows[paths[what]]["reason"]
    assert rows[paths["junk"]]["status"] == "damaged" and "not an asynclog file" in rows[paths["junk"]]["reason"]
    assert rows[paths["cut"]]["status"] == "incomplete" and "no footer" in rows[paths["cut"]]["reason"]
    killed = rows[paths["step_99"]]
    assert killed["status"] == "incomplete" and "probe process ended" in killed["reason"]
    assert killed["checkpoint"] == "step_99"


def test_ls_of_a_missing_folder_says_so_in_one_line(tmp_path):
    done = cli("ls", str(tmp_path / "nosuch"))
    assert done.returncode == 4
    assert done.stderr.strip().count("\n") == 0 and "not a directory" in done.stderr


# --- sweep and scan -------------------------------------------------------------------------------------------
def test_sweep_sorts_by_any_column_with_missing_values_last(runs):
    out, paths = runs
    done = cli("sweep", str(out), "--sort", "deltaH1", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["checkpoint"] for r in rows[:3]] == ["step_2", "step_30", "step_10"]
    assert all(r["deltaH1"] is None for r in rows[3:])
    done = cli("sweep", str(out), "--sort", "ESS", "--reverse", "--json")
    assert [r["ESS"] for r in json.loads(done.stdout)[:3]] == [12.0, 9.0, 1.0]


def test_sweep_sorts_checkpoint_names_by_their_numbers(runs):
    out, _ = runs
    done = cli("sweep", str(out), "--sort", "checkpoint")
    assert done.returncode == 0, done.stderr
    order = [line.split()[0] for line in done.stdout.splitlines()[1:]]
    steps = [name for name in order if name.startswith("step_")]  # damaged copies of step_10 say step_10 too
    assert list(dict.fromkeys(steps)) == ["step_2", "step_10", "step_30", "step_99"]
    assert steps == sorted(steps, key=lambda name: int(name.removeprefix("step_")))


def test_sweep_csv_and_json_hold_every_column_of_scan(runs, tmp_path):
    out, _ = runs
    expected = asynclog_scan_rows(out)
    done = cli("sweep", str(out), "--csv", "-o", str(tmp_path / "sweep.csv"))
    assert done.returncode == 0 and done.stdout == ""
    with open(tmp_path / "sweep.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(analysis().COLUMNS)
    assert [r["path"] for r in table] == [r["path"] for r in expected]
    by_path = {r["path"]: r for r in table}
    for r in expected:
        assert by_path[r["path"]]["deltaH1"] == ("" if r["deltaH1"] is None else repr(r["deltaH1"]))
    assert json.loads(cli("sweep", str(out), "--json").stdout) == expected


def asynclog_scan_rows(out) -> list[dict]:
    return analysis().scan(out, as_frame=False)


def test_sweep_refuses_an_unknown_sort_key_and_names_the_columns(runs):
    out, _ = runs
    done = cli("sweep", str(out), "--sort", "deltah1")
    assert done.returncode == 3 and "deltaH1" in done.stderr and "ESS" in done.stderr


def test_scan_gives_a_dataframe_with_pandas_and_a_list_when_asked(runs):
    out, paths = runs
    frame = analysis().scan(out)
    assert list(frame.columns) == list(analysis().COLUMNS) and len(frame) == len(paths)
    step_10 = frame[frame["path"] == paths["step_10"]].iloc[0]
    assert step_10["deltaH1"] == PROBE_RUNS["step_10"][0] and step_10["status"] == "complete"
    rows = analysis().scan(out, as_frame=False)
    assert isinstance(rows, list) and rows == frame.astype(object).where(frame.notna(), None).to_dict("records")


# --- show -----------------------------------------------------------------------------------------------------
def test_show_prints_metadata_results_timing_diagnostics_and_cost(runs):
    _, paths = runs
    done = cli("show", paths["step_10"])
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for expected in ("/ckpts/sweep/step_10", "core results", "deltaH1", "0.0003", "timing (seconds)",
                     "phase1_sum_X", "phase5_importance", "total_time", "ground truth", "deltaH_true",
                     "importance sampling diagnostics", "ESS", "w_max", "batch statistics", "E_batch", "U_batch",
                     "logging cost", "probe time in logging", "bytes on disk", "dropped", "warnings: none"):
        assert expected in text, expected


def test_show_warns_when_ess_is_below_the_threshold_and_names_it(runs):
    _, paths = runs
    done = cli("show", paths["step_2"])
    assert "ESS 1 is below 1.6 (0.1 of the 16 E-batch sequences; --min-ess-fraction)" in done.stdout
    assert "ESS" not in cli("show", paths["step_10"], "--json").stdout.split('"warnings"')[1].split("]")[0]
    done = cli("show", paths["step_10"], "--min-ess", "50")
    assert "ESS 12 is below 50 (--min-ess 50)" in done.stdout


def test_show_warns_about_nan_in_batch_statistics(runs):
    _, paths = runs
    warnings = json.loads(cli("show", paths["step_30"], "--json").stdout)["warnings"]
    assert any(w.startswith("batch_statistics.U_batch.avg_reward is NaN") for w in warnings), warnings
    assert not any("E_batch" in w for w in warnings)


def test_show_of_a_plain_run_without_a_summary_has_no_warnings(runs):
    _, paths = runs
    done = cli("show", paths["notes"])
    assert done.returncode == 0 and "warnings: none" in done.stdout, done.stdout


def test_show_warns_about_incomplete_damaged_and_dropping_runs(runs):
    _, paths = runs
    killed = json.loads(cli("show", paths["step_99"], "--json").stdout)
    assert killed["status"] == "incomplete" and any("probe process ended" in w for w in killed["warnings"])
    damaged = cli("show", paths["footer"])
    assert damaged.returncode == 0 and "damaged" in damaged.stdout and "asynclog verify" in damaged.stdout
    dropping = cli("show", paths["dropping"])
    assert "dropped" in dropping.stdout and "records" in dropping.stdout
    assert "warnings: none" not in dropping.stdout


def test_show_json_holds_the_summary_and_the_footer_without_its_index(runs):
    _, paths = runs
    report = json.loads(cli("show", paths["step_10"], "--json").stdout)
    with open(paths["step_10"].removesuffix(".alog") + "_summary.json") as f:
        assert report["summary"] == json.load(f)
    assert report["footer"]["complete"] is True and "index" not in report["footer"]
    assert report["row"]["deltaH1"] == PROBE_RUNS["step_10"][0] and report["warnings"] == []


def test_show_accepts_the_summary_path_and_refuses_a_missing_run(runs, tmp_path):
    _, paths = runs
    by_summary = cli("show", paths["step_10"].removesuffix(".alog") + "_summary.json", "--json")
    assert json.loads(by_summary.stdout)["path"] == paths["step_10"]
    missing = cli("show", str(tmp_path / "nosuch.alog"))
    assert missing.returncode == 4 and "no such run" in missing.stderr and missing.stderr.count("\n") == 1
    folder = cli("show", str(tmp_path))
    assert folder.returncode == 3 and "is a folder" in folder.stderr and "asynclog ls" in folder.stderr


def test_show_lists_the_warnings_the_probe_logged_through_the_logging_bridge(tmp_path):
    import logging

    logger = logging.getLogger("probe.bridge_test")
    logger.propagate = False
    with asynclog.start(tmp_path, name="bridged") as run:
        handler = asynclog.LoggingHandler(run)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.info("all fine")
        logger.warning("ESS low: %.1f", 3.5)
        logger.removeHandler(handler)
    done = cli("show", run.path)
    assert done.returncode == 0, done.stderr
    assert "logged WARNING from probe.bridge_test: ESS low: 3.5" in done.stdout
    assert "all fine" not in done.stdout


def test_show_of_a_run_folder_lists_the_warnings_any_rank_logged(tmp_path):
    import logging

    logger = logging.getLogger("probe.ranks_test")
    logger.propagate, logger.level = False, logging.INFO
    for rank in range(2):
        with asynclog.start(tmp_path, name="ranks", rank=rank, world_size=2) as run:
            handler = asynclog.LoggingHandler(run)
            logger.addHandler(handler)
            logger.info("rank %d fine", rank)
            if rank == 1:
                logger.warning("ESS low on rank %d", rank)
            logger.removeHandler(handler)
    done = cli("show", str(tmp_path / "ranks"))
    assert done.returncode == 0, done.stderr
    assert "rank 1: logged WARNING from probe.ranks_test: ESS low on rank 1" in done.stdout
    assert "fine" not in done.stdout


def test_a_run_folder_whose_manifest_cannot_be_read_is_damaged(tmp_path):
    for rank in range(2):
        with asynclog.start(tmp_path, name="ranks", rank=rank, world_size=2) as run:
            run.event("core_results", deltaH1=0.5)
    folder = tmp_path / "ranks"
    (folder / "manifest.json").write_text("{not json")
    facts = analysis().read_run(str(folder))
    assert facts.status == "damaged" and facts.reason.startswith("manifest.json is not JSON"), facts.reason


# --- checkpoints saved as <step>/model ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """A sweep over ``checkpoints/step_N/model`` and a run written before names skipped ``model``."""
    out = tmp_path_factory.mktemp("adapters")
    checkpoints = str(out / "checkpoints")
    paths = adapter_sweep(out / "logs", checkpoints)
    paths.append(old_adapter_run(out / "logs", os.path.join(checkpoints, "step_240", "model")))
    return out / "logs", paths


def test_ls_labels_each_run_by_its_checkpoint_folder_not_model(adapters):
    out, paths = adapters
    done = cli("ls", str(out))
    assert done.returncode == 0, done.stderr
    labels = {line.split()[-1]: line.split()[2] for line in done.stdout.splitlines()[1:]}
    assert labels == dict(zip(paths, ["step_60", "step_120", "step_180", "step_240"]))


def test_sweep_rows_separate_the_checkpoints_old_runs_included(adapters):
    out, paths = adapters
    done = cli("sweep", str(out), "--sort", "checkpoint", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(r["checkpoint"], r["path"]) for r in rows] == list(zip(["step_60", "step_120", "step_180", "step_240"],
                                                                   paths))
    assert os.path.basename(paths[-1]) == "entropy_probe_09-00-00_model.alog"  # the old run's file says model


def test_show_names_the_checkpoint_and_its_path(adapters):
    _, paths = adapters
    done = cli("show", paths[0])
    assert done.returncode == 0, done.stderr
    [line] = [x for x in done.stdout.splitlines() if x.startswith("checkpoint")]
    assert line.split()[1:] == ["step_60", f"({os.path.dirname(os.path.dirname(os.path.dirname(paths[0])))}/"
                                           "checkpoints/step_60/model)"]


def test_a_label_is_the_recorded_name_sanitised_and_no_pattern_from_a_file_is_run(tmp_path):
    """A log may come from anyone: its recorded checkpoint name is cleaned like a file name, and a pattern in
    its settings is never compiled (a catastrophic one would hang every tool)."""
    day = tmp_path / "logs" / "2025-01-14"
    day.mkdir(parents=True)
    hostile = {"checkpoint_path": "/ckpt/step_7/model", "checkpoint_name": "../../etc/passwd\u202e"}
    settings = {"enabled": True, "level": "standard", "checkpoint_name": "(a+)+$"}
    path = str(day / "entropy_probe_09-00-00_x.alog")
    asynclog.start(path=path, metadata={"run_metadata": hostile, "detailed_logging": settings}).close()
    done = cli("sweep", str(tmp_path / "logs"), "--json")
    assert done.returncode == 0, done.stderr
    assert [r["checkpoint"] for r in json.loads(done.stdout)] == ["etc_passwd"]


def created_at(path: str, created: float) -> None:
    """Rewrite the log's header frame to say it was created at ``created`` (a float64 as before: the same
    length), its checksum made to hold: what a crafted or bit-flipped-then-resealed file says."""
    with open(path, "rb") as f:
        header = fmt.read_header(f, fmt.PREAMBLE_SIZE, fmt.read_preamble(f))
        meta = fmt.read_meta(f, header)
        f.seek(0)
        data = bytearray(f.read())
    start = header.offset + fmt.HEADER_SIZE
    at = data.index(b"\xcb" + struct.pack(">d", meta["created"]), start)
    data[at + 1 : at + 9] = struct.pack(">d", created)
    meta_bytes = bytes(data[start : start + header.meta_len])
    data[start + header.meta_len : header.end] = fmt.frame_suffix(meta_bytes, b"")
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("created", [1e20, -1e20, math.nan, math.inf])
def test_a_start_time_past_any_date_reads_as_no_date(tmp_path, created):
    """Found writing the fuzz targets (tests/fuzz): datetime.fromtimestamp raised."""
    with asynclog.start(tmp_path, name="when") as run:
        run.event("step", i=1)
    created_at(run.path, created)
    assert analysis().row(analysis().read_run(run.path))["date"] is None
    for done in (cli("ls", str(tmp_path)), cli("show", run.path)):
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]


def test_a_summary_counting_more_sequences_than_a_float_holds_shows_without_an_ess_floor(tmp_path):
    """Found writing the fuzz targets (tests/fuzz): the ESS floor overflowed a float."""
    with asynclog.start(tmp_path, name="many") as run:
        run.event("step", i=1)
    summary = '{"ground_truth": {"diagnostics": {"ESS": 1.0}}, "core_results": {"B_E": 1%s}}' % ("0" * 400)
    (tmp_path / "many_summary.json").write_text(summary)
    done = cli("show", run.path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "ESS" in done.stdout and "is below" not in done.stdout


@pytest.mark.parametrize("odd", ["ext", "array key"])
def test_show_json_of_a_header_json_cannot_hold_is_one_line(tmp_path, odd):
    """Found writing the fuzz targets (tests/fuzz): msgpack holds extension types and maps keyed by arrays,
    which a header asynclog writes never has and JSON cannot print; show --json raised TypeError."""
    import msgspec

    value = msgspec.msgpack.Ext(1, b"xy") if odd == "ext" else {(1, 2): 3}
    meta = msgspec.msgpack.encode({"created": 1.0, "config": {}, "metadata": {"x": value}})
    path = tmp_path / "odd.alog"
    path.write_bytes(fmt.log_start(meta))
    done = cli("show", "--json", str(path))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and str(path) in lines[0], done.stderr[-2000:]
    assert cli("show", str(path)).returncode == 0
