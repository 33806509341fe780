"""asynclog diff: two runs' configs and results, side by side, by dotted key; exit 0 the same, 1 different."""

from __future__ import annotations

import json
import os

import pytest

import asynclog
from asynclog import cli
from asynclog.tools.diff import ABSENT, Difference, compare, diff_runs
from conftest import adapter_sweep


def _config(out, changes: dict | None = None) -> dict:
    return {"detailed_logging": {"enabled": True, "level": "standard", "output_directory": str(out), "max_files": 0},
            "batch_config": {"B_E": 4, "B_U": 2, "G": 3}, "learning_rate": 0.5, **(changes or {})}


def _run(out, checkpoint: str, config_changes: dict | None = None) -> str:
    config = _config(out, config_changes)
    logger = asynclog.DetailedLogger(config)
    logger.log_run_start(checkpoint, config)
    logger.log_phase_start("phase1_sum_X")
    logger.log_phase_end("phase1_sum_X")
    logger.log_core_results({"deltaH1": 1e-4, "bars_dot": 0.5})
    return logger.finalize_log({})


def test_a_run_is_the_same_as_itself_and_exits_0(tmp_path, capsys):
    path = _run(tmp_path, "/ckpt/step_60/model")
    assert diff_runs(path, path).equal
    assert cli.main(["diff", path, path]) == 0
    assert "the same config, run, core_results" in capsys.readouterr().out


def test_two_checkpoints_differ_in_results_and_metadata_not_in_when_they_ran(tmp_path, capsys):
    a, b, _ = adapter_sweep(tmp_path / "logs", str(tmp_path / "ckpt"))
    found = diff_runs(a, b)
    keys = {d.key: d for d in found.differences}
    assert keys["core_results.deltaH1"] == Difference("core_results.deltaH1", 1.1e-4, 2.2e-4)
    assert keys["run.checkpoint_name"][1:] == ("step_60", "step_120")
    assert "ground_truth.diagnostics.ESS" in keys
    assert not any(key.startswith(("timing", "run.timestamp", "run.local_time", "run.log_path")) for key in keys)
    assert "run.log_path" in found.left_out and "timing.total_time" in found.left_out
    assert not any(key.startswith("config.") for key in keys)  # one config for the sweep
    assert cli.main(["diff", a, b]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"--- A: {a}\n+++ B: {b}\n")
    assert any(line.split() == ["core_results.deltaH1", "0.00011", "0.00022"] for line in out.splitlines())
    assert "--all shows them" in out


def test_all_compares_what_differs_on_every_run_too(tmp_path):
    a, b, _ = adapter_sweep(tmp_path / "logs", str(tmp_path / "ckpt"))
    found = diff_runs(a, b, everything=True)
    keys = {d.key for d in found.differences}
    assert {"timing.total_time", "run.log_path", "run.summary_path"} <= keys and found.left_out == []


def test_config_differences_are_dotted_keys_and_a_key_one_run_lacks_is_absent(tmp_path, capsys):
    a = _run(tmp_path, "/ckpt/step_60", {"batch_config": {"B_E": 4, "B_U": 2, "G": 8}})
    b = _run(tmp_path, "/ckpt/step_60", {"temperature": 0.7})
    found = diff_runs(a, b)
    keys = {d.key: d for d in found.differences}
    assert keys["config.batch_config.G"] == Difference("config.batch_config.G", 8, 3)
    assert keys["config.temperature"] == Difference("config.temperature", ABSENT, 0.7)
    assert "run.config_hash" in keys and "run.checkpoint_name" not in keys
    assert cli.main(["diff", a, b, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["equal"] is False and {"key": "config.temperature", "b": 0.7} in report["differences"]


def test_the_config_sidecar_is_read_when_the_header_has_no_config(tmp_path):
    paths = []
    for g in (3, 4):
        with asynclog.start(tmp_path, name=f"plain{g}", metadata={"run_metadata": {"checkpoint_name": "x"}}) as run:
            paths.append(run.path)
        with open(run.path.removesuffix(".alog") + "_config.yaml", "w") as f:
            f.write(f"batch_config:\n  G: {g}\n")
    assert diff_runs(*paths).differences == [Difference("config.batch_config.G", 3, 4)]


def test_a_hostile_config_sidecar_is_a_note_not_a_blow_up(tmp_path, capsys):
    paths = []
    for name in ("a", "b"):
        with asynclog.start(tmp_path, name=name, metadata={"run_metadata": {"checkpoint_name": "x"}}) as run:
            paths.append(run.path)
    with open(paths[1].removesuffix(".alog") + "_config.yaml", "w") as f:
        f.write("a: &a [1, *a]\n")  # an alias inside the node it names
    assert cli.main(["diff", *paths]) == 0
    assert "its config is not compared" in capsys.readouterr().err


def _ranks_run(out, name: str, deltaH1: float) -> str:
    """A run folder of two ranks, both in this process."""
    config = _config(out)
    loggers = [asynclog.DetailedLogger(config, rank=r, world_size=2, run_name=name) for r in (0, 1)]
    [folder] = {logger.log_run_start("/ckpt/step_5", config) for logger in loggers}
    for logger in loggers:
        logger.log_core_results({"deltaH1": deltaH1, "bars_dot": 2.5})
        logger.finalize_log({})
    return folder


def test_run_folders_of_ranks_are_runs(tmp_path):
    a, b = _ranks_run(tmp_path, "job_a", 0.125), _ranks_run(tmp_path, "job_b", 0.25)
    assert os.path.isdir(a) and os.path.isdir(b)
    keys = {d.key: d for d in diff_runs(a, b).differences}
    assert keys["core_results.deltaH1"][1:] == (0.125, 0.25)
    assert "run.world_size" not in keys and "config.batch_config.G" not in keys


@pytest.mark.parametrize("make, status", [
    (lambda tmp: str(tmp / "nosuch.alog"), cli.NOT_FOUND),
    (lambda tmp: str(tmp), cli.USAGE),  # a folder of runs
    (lambda tmp: (tmp / "x.alog").write_text("not a log") and str(tmp / "x.alog"), cli.USAGE),
])
def test_a_missing_run_a_folder_of_runs_or_no_run_is_one_line(tmp_path, capsys, make, status):
    good = _run(tmp_path / "logs", "/ckpt/step_1")
    assert cli.main(["diff", good, make(tmp_path)]) == status
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_compare_treats_true_and_1_apart_and_nan_as_nan():
    nan = float("nan")
    found, _ = compare({"s": {"x": True, "y": nan, "z": [1, 2]}}, {"s": {"x": 1, "y": nan, "z": [1, 2]}})
    assert found == [Difference("s.x", True, 1)]
