"""``asynclog import``: runs of the probe's earlier JSON logger become asynclog runs that ``ls``, ``sweep`` and
``show`` list beside new ones, with every value kept.

The fixtures write files the way that logger does: one ``json.dump(..., indent=2)`` of its nine sections
(gzip'd text, or plain with ``compress: false``) into ``<out>/<YYYY-MM-DD>/entropy_probe_<HH-MM-SS>_<ckpt>``,
a ``_summary.json`` (``json.dump(..., indent=2)``) and a ``_config.yaml`` (``yaml.dump``) beside it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta

import pytest
import torch
import yaml

import asynclog
from asynclog import cli
from asynclog.probe import layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = ("minimal", "standard", "detailed", "debug")
WHEN = datetime(2025, 1, 15, 14, 30, 25, 123456)
NAN = float("nan")


# --- the JSON logger's files ----------------------------------------------------------------------------
def json_logger_data(level: str, checkpoint: str = "/ckpt/run7/step_60", when: datetime = WHEN) -> dict:
    """What the JSON logger holds at ``finalize_log`` for a small run (B_E 4, B_U 2, G 3) at ``level``."""
    data = {
        "run_metadata": {"timestamp": when.isoformat(), "checkpoint_path": checkpoint, "probe_version": "2.0",
                         "config_hash": "0123456789abcdef", "logging_level": level,
                         "environment": {"python_version": "3.11.9", "torch_version": "2.4.0",
                                         "cuda_available": True, "gpu_count": 1, "gpu_name": "NVIDIA H100",
                                         "gpu_memory_gb": 85.0}},
        "core_results": {"bars_dot": 1.2345678901234567e-4, "deltaH1": 6.172839450617284e-05,
                         "deltaH_true": -5.9e-05, "learning_rate": 0.5, "B_E": 4, "B_U": 2, "G": 3,
                         "mb_size_prompts": 2, "weighting_mode": "dr_grpo"},
        "timing": {"phase0_sampling_time": 1.5, "phase1_sum_X_time": 2.25, "total_time": 10.125,
                   "phase0_sampling": 1.4999, "phase1_sum_X": 2.2499, "phase5_importance": 0.75},
        "ground_truth": {}, "batch_statistics": {}, "sequences": {}, "token_data": {}, "raw_tensors": {},
        "debug_info": {},
    }
    if level == "minimal":
        return data
    data["batch_statistics"] = {
        "E_batch": {"num_prompts": 4, "num_sequences": 4, "G": 1, "avg_prompt_length": 12.5, "max_sequence_length": 40,
                    "avg_generation_length": 20.0, "std_generation_length": 3.5, "min_generation_length": 15.0,
                    "max_generation_length": 25.0, "generation_length_percentiles": [16.0, 18.0, 20.0, 22.0, 24.0]},
        "U_batch": {"num_prompts": 2, "num_sequences": 6, "G": 3, "avg_prompt_length": 10.0, "max_sequence_length": 38,
                    "avg_advantages": 0.0, "std_advantages": 0.4714045207910317, "avg_reward": 0.5,
                    "std_reward": 0.5, "min_reward": 0.0, "max_reward": 1.0},
    }
    data["ground_truth"] = {"H_orig": 2.5, "H_upd": 2.4999, "deltaH_true": -1e-4,
                            "diagnostics": {"ESS": 3.2, "w_max": 0.6, "w_min": 0.01, "w_sum_global": 4.0,
                                            "is_mode": "snis", "nan_seen": NAN}}
    if level == "standard":
        return data
    data["ground_truth"]["importance_sampling_details"] = {
        "logw_stats": {"mean": 0.01, "std": 0.2, "min": -0.3, "max": 0.4},
        "weight_stats": {"mean": 0.7, "std": 0.1, "min": 0.5, "max": 1.0},
        "S_orig_stats": {"mean": -20.5, "std": 3.0, "min": -25.0, "max": -15.0, "shape": [4]}}
    data["sequences"] = {
        "E_batch": [{"prompt_id": b, "prompt_text": f"[PROMPT_{b}] ∑ é", "response_text": f"[RESPONSE_{b}]",
                     "prompt_length": 10 + b, "sequence_logprob": None, "rb_entropy": None, "advantage": 0.0}
                    for b in range(4)],
        "U_batch": [{"prompt_id": b, "prompt_text": f"[PROMPT_{b}]",
                     "responses": [{"response_id": g, "response_text": f"[RESPONSE_{b}_{g}]",
                                    "sequence_logprob": -3.25 * g, "reward": float(g % 2), "advantage": None}
                                   for g in range(3)]}
                    for b in range(2)],
    }
    data["debug_info"] = {"phase1_sum_X_results": {"norm": 0.5, "per_layer": [1, 2.5, None]}}
    if level == "detailed":
        return data
    data["raw_tensors"] = {
        "E_batch": {"sequences": [[[b, b + 1, b + 2, 0]] for b in range(4)], "prompt_lens": [2, 3, 2, 3]},
        "U_batch": {"rewards": [[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]], "attention_masks": [[True, False], [False, True]]},
        "importance_sampling": {"S_orig": [-20.5, -19.25, NAN, -21.0], "S_upd": [-20.0, -19.0, -22.0, -21.5],
                                "logw": [0.5, 0.25, float("inf"), -0.5], "importance_weights": [1.0, 0.77, 0.0, 0.5]},
    }
    return data


def summary_of(data: dict) -> dict:
    """The JSON logger's summary of ``data``."""
    truth = data["ground_truth"]
    return {"run_metadata": data["run_metadata"], "core_results": data["core_results"], "timing": data["timing"],
            "ground_truth": {"H_orig": truth.get("H_orig"), "H_upd": truth.get("H_upd"),
                             "deltaH_true": truth.get("deltaH_true"), "ESS": truth.get("diagnostics", {}).get("ESS")},
            "batch_statistics": data["batch_statistics"]}


def write_run(folder, data: dict, compress: bool = True, name: str | None = None, summary: bool = True) -> str:
    """Write ``data`` as the JSON logger does; return the main file's path."""
    when = datetime.fromisoformat(data["run_metadata"]["timestamp"]) if "run_metadata" in data else WHEN
    day = os.path.join(folder, when.strftime("%Y-%m-%d"))
    os.makedirs(day, exist_ok=True)
    checkpoint = os.path.basename(data.get("run_metadata", {}).get("checkpoint_path", "step_60"))
    base = os.path.join(day, name or f"entropy_probe_{when:%H-%M-%S}_{checkpoint}")
    main = base + (".json.gz" if compress else ".json")
    with (gzip.open(main, "wt", encoding="utf-8") if compress else open(main, "w")) as f:
        json.dump(data, f, indent=2)
    if summary:
        with open(base + "_summary.json", "w") as f:
            json.dump(summary_of(data), f, indent=2)
    level = data.get("run_metadata", {}).get("logging_level", "standard")
    config = {"batch_config": {"B_E": 4, "B_U": 2, "G": 3}, "learning_rate": 0.5,
              "detailed_logging": {"enabled": True, "level": level, "compress": compress,
                                   "output_directory": "entropy_experiments/logs"}}
    with open(base + "_config.yaml", "w") as f:
        yaml.dump(config, f, default_flow_style=False)
    return main


def write_text(folder, name: str, text: str, compress: bool = True) -> str:
    day = os.path.join(folder, "2025-01-15")
    os.makedirs(day, exist_ok=True)
    path = os.path.join(day, name)
    with (gzip.open(path, "wt", encoding="utf-8") if compress else open(path, "w")) as f:
        f.write(text)
    return path


# --- helpers ----------------------------------------------------------------------------------------------
def import_in_process(capsys, *args) -> tuple[int, str, str]:
    status = cli.main(["import", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


def asynclog_cli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "asynclog", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=180)


def as_json(value) -> str:
    """Exact comparison: key order, int against float, NaN and infinities all count."""
    return json.dumps(value)


def imported_logs(out) -> list[str]:
    return sorted(os.path.join(folder, n) for folder, _, names in os.walk(out) for n in names if n.endswith(".alog"))


def events(log, name: str) -> list[dict]:
    return [r["data"] for r in log.events() if r.get("name") == name]


def snapshot(folder) -> dict:
    """Every file below ``folder``: its bytes and mtime."""
    found = {}
    for here, _, names in os.walk(folder):
        for n in names:
            path = os.path.join(here, n)
            found[path] = (open(path, "rb").read(), os.stat(path).st_mtime_ns)
    return found


# --- every value kept ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [True, False], ids=["gz", "json"])
@pytest.mark.parametrize("level", LEVELS)
def test_a_run_of_each_level_imports_with_every_value_kept(tmp_path, capsys, level, compress):
    data = json_logger_data(level)
    main = write_run(tmp_path / "history", data, compress)
    before = snapshot(tmp_path / "history")
    status, out, err = import_in_process(capsys, tmp_path / "history", "--out", tmp_path / "out")
    assert status == 0 and err == "", err
    [dest] = imported_logs(tmp_path / "out")
    assert dest == str(tmp_path / "out" / "2025-01-15" / "entropy_probe_14-30-25_step_60.alog")
    assert f"{main} -> {dest}" in out
    with asynclog.open(dest) as log:
        assert log.complete
        meta = log.header["metadata"]
        assert as_json(meta["run_metadata"]) == as_json({**data["run_metadata"], "local_time": "2025-01-15T14:30:25"})
        raw = open(main, "rb").read()
        assert meta["imported"]["main"] == {"path": main, "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
                                            "compressed": compress}
        assert meta["layout"] == {"id": layout.LAYOUT_ID, "stem": "entropy_probe_14-30-25_step_60",
                                  "template": "entropy_probe_{timestamp}_{checkpoint_name}.json"}
        assert meta["probe_config"]["detailed_logging"]["level"] == level
        assert as_json(events(log, "core_results")) == as_json([data["core_results"]])
        assert as_json(events(log, "final_results")) == as_json([{"timing": data["timing"]}])
        stats = [{"batch": batch, **values} for batch, values in data["batch_statistics"].items()]
        assert as_json(events(log, "batch_statistics")) == as_json(stats)
        truth = dict(data["ground_truth"])
        details = truth.pop("importance_sampling_details", None)
        assert as_json(events(log, "ground_truth")) == as_json([truth] if truth else [])
        assert as_json(events(log, "importance_sampling_details")) == as_json([details] if details else [])
        assert as_json(events(log, "debug_info")) == as_json([data["debug_info"]] if data["debug_info"] else [])
        check_rows(log, data["sequences"])
        check_tensors(log, data["raw_tensors"])
    assert snapshot(tmp_path / "history") == before, "the sources were changed"


def check_rows(log, sequences: dict) -> None:
    expected = {}
    if "E_batch" in sequences:
        expected["sequences/E_batch"] = [{"sequence_id": n, **row} for n, row in enumerate(sequences["E_batch"])]
    if "U_batch" in sequences:
        flat = [{"prompt_id": p["prompt_id"], "prompt_text": p["prompt_text"], **r}
                for p in sequences["U_batch"] for r in p["responses"]]
        expected["sequences/U_batch"] = [{"sequence_id": n, **row} for n, row in enumerate(flat)]
    assert log.stream_names() == list(expected)
    for name, rows in expected.items():
        assert as_json(list(log.rows(name))) == as_json(rows)


def check_tensors(log, raw: dict) -> None:
    expected = {f"{batch}/{key}": value for batch, values in raw.items() for key, value in values.items()}
    assert sorted(log.tensor_names()) == sorted(expected)
    for name, value in expected.items():
        tensor = log.tensor(name)
        assert as_json(tensor.tolist()) == as_json(value), name
    if expected:
        assert log.tensor("E_batch/sequences").dtype == torch.int64
        assert log.tensor("U_batch/attention_masks").dtype == torch.bool
        assert log.tensor("importance_sampling/S_orig").dtype == torch.float64


@pytest.mark.parametrize("level", ["minimal", "detailed"])
def test_the_summary_keeps_the_loggers_keys_and_adds_what_ls_reads(tmp_path, capsys, level):
    data = json_logger_data(level)
    main = write_run(tmp_path / "history", data)
    import_in_process(capsys, tmp_path / "history", "--out", tmp_path / "out")
    [dest] = imported_logs(tmp_path / "out")
    summary = json.load(open(dest.removesuffix(".alog") + "_summary.json"))
    theirs = json.load(open(main.removesuffix(".json.gz") + "_summary.json"))
    for key, value in theirs.items():
        if key == "run_metadata":
            value = {**value, "local_time": "2025-01-15T14:30:25"}
        if key == "ground_truth" and "diagnostics" in data["ground_truth"]:
            value = {**value, "diagnostics": {**data["ground_truth"]["diagnostics"], "nan_seen": None}}
        assert as_json(summary[key]) == as_json(value), key
    assert summary["level"] == level and summary["complete"] is True and summary["log_path"] == dest
    config = main.removesuffix(".json.gz") + "_config.yaml"
    assert open(summary["config_path"], "rb").read() == open(config, "rb").read()


def test_an_old_run_without_metadata_or_summary_is_named_from_its_file(tmp_path, capsys):
    data = json_logger_data("standard")
    del data["run_metadata"], data["debug_info"], data["token_data"]
    write_run(tmp_path / "history", data, name="entropy_probe_09-05-01_step_30", summary=False)
    status, _, err = import_in_process(capsys, tmp_path / "history", "--out", tmp_path / "out")
    assert status == 0, err
    [dest] = imported_logs(tmp_path / "out")
    assert dest.endswith(os.path.join("2025-01-15", "entropy_probe_09-05-01_step_30.alog"))
    [row] = asynclog.scan(tmp_path / "out", as_frame=False)
    assert (row["checkpoint"], row["date"], row["time"], row["ESS"]) == ("step_30", "2025-01-15", "09:05:01", 3.2)
    assert row["deltaH1"] == data["core_results"]["deltaH1"] and row["status"] == "complete"


def test_a_summary_that_is_no_json_object_is_made_again_from_the_main_file_with_a_note(tmp_path, capsys):
    data = json_logger_data("standard")
    main = write_run(tmp_path / "history", data)
    summary = main.removesuffix(".json.gz") + "_summary.json"
    open(summary, "w").write("[]")
    status, _, err = import_in_process(capsys, tmp_path / "history", "--out", tmp_path / "out")
    assert status == 0
    [line] = err.splitlines()
    assert main in line and "summary" in line and "made again" in line
    [row] = asynclog.scan(tmp_path / "out", as_frame=False)
    assert (row["ESS"], row["deltaH1"], row["level"]) == (3.2, data["core_results"]["deltaH1"], "standard")
    with asynclog.open(row["path"]) as log:
        assert log.header["metadata"]["imported"]["summary"]["size"] == 2


def test_an_unknown_section_is_kept_as_a_record_under_its_key(tmp_path, capsys):
    data = {**json_logger_data("minimal"), "probe_notes": {"seed": 7}, "extra_list": [1, "a"]}
    write_run(tmp_path / "history", data)
    import_in_process(capsys, tmp_path / "history", "--out", tmp_path / "out")
    with asynclog.open(imported_logs(tmp_path / "out")[0]) as log:
        assert events(log, "probe_notes") == [{"seed": 7}]
        assert events(log, "extra_list") == [{"value": [1, "a"]}]


def test_rows_that_make_no_table_and_ragged_tensors_are_kept_as_records(tmp_path, capsys):
    data = json_logger_data("debug")
    data["sequences"]["E_batch"][2] = "not a row"
    data["raw_tensors"]["E_batch"]["ragged"] = [[1, 2], [3]]
    data["raw_tensors"]["E_batch"]["words"] = ["a", "b"]
    write_run(tmp_path / "history", data)
    status, _, err = import_in_process(capsys, tmp_path / "history", "--out", tmp_path / "out")
    assert status == 0, err
    with asynclog.open(imported_logs(tmp_path / "out")[0]) as log:
        assert "sequences/E_batch" not in log.stream_names() and "sequences/U_batch" in log.stream_names()
        kept = [{"batch": "E_batch", "rows": data["sequences"]["E_batch"]}]
        assert as_json(events(log, "sequences")) == as_json(kept)
        assert events(log, "raw_tensors") == [{"batch": "E_batch", "key": "ragged", "value": [[1, 2], [3]]},
                                              {"batch": "E_batch", "key": "words", "value": ["a", "b"]}]
        assert log.tensor("E_batch/prompt_lens").tolist() == [2, 3, 2, 3]


# --- ls, sweep and show --------------------------------------------------------------------------------------
def test_ls_sweep_and_show_list_imported_runs_beside_a_new_one(tmp_path):
    out = tmp_path / "logs"
    config = {"detailed_logging": {"enabled": True, "level": "minimal", "output_directory": str(out)}}
    with asynclog.DetailedLogger(config) as native:
        native.log_run_start("/ckpt/step_90", config)
        native.finalize_log({"deltaH1": 1.5e-4, "bars_dot": 3e-4, "learning_rate": 0.5})
    old = [json_logger_data("standard", "/ckpt/step_60"),
           json_logger_data("detailed", "/ckpt/step_30/", WHEN - timedelta(days=3))]
    for i, data in enumerate(old):
        write_run(tmp_path / "history", data, compress=i == 0)
    done = asynclog_cli("import", tmp_path / "history", "--out", out)
    assert done.returncode == 0, done.stderr
    rows = json.loads(asynclog_cli("ls", out, "--json").stdout)
    assert [r["checkpoint"] for r in rows] == ["step_30", "step_60", "step_90"]
    for row, data in zip(rows, old[::-1]):
        meta, core, truth = data["run_metadata"], data["core_results"], data["ground_truth"]
        when = datetime.fromisoformat(meta["timestamp"])
        assert (row["date"], row["time"]) == (f"{when:%Y-%m-%d}", f"{when:%H:%M:%S}")
        assert (row["level"], row["status"]) == (meta["logging_level"], "complete")
        assert row["config_hash"] == meta["config_hash"]
        assert (row["deltaH1"], row["bars_dot"], row["learning_rate"]) == (core["deltaH1"], core["bars_dot"], 0.5)
        assert (row["deltaH_true"], row["ESS"], row["w_max"]) == (truth["deltaH_true"], 3.2, 0.6)
        assert row["total_time"] == data["timing"]["total_time"]
    assert rows[2]["deltaH1"] == 1.5e-4 and rows[2]["status"] == "complete"
    swept = json.loads(asynclog_cli("sweep", out, "--json", "--sort", "deltaH1").stdout)
    assert sorted(map(json.dumps, swept)) == sorted(map(json.dumps, rows))
    shown = asynclog_cli("show", rows[1]["path"])
    assert shown.returncode == 0, shown.stderr
    assert "/ckpt/step_60" in shown.stdout and "ESS" in shown.stdout and "dr_grpo" in shown.stdout
    [host] = [line for line in shown.stdout.splitlines() if line.startswith("host")]
    assert host.split(None, 1)[1] == "python 3.11.9, torch 2.4.0, 1 x NVIDIA H100"  # the logger kept no host name


def test_retention_counts_an_imported_run_by_its_own_time(tmp_path, capsys):
    main = write_run(tmp_path / "history", json_logger_data("minimal"))
    out = tmp_path / "logs"
    config = {"detailed_logging": {"enabled": True, "level": "minimal", "output_directory": str(out)}}
    with asynclog.DetailedLogger(config) as native:
        native.log_run_start("/ckpt/step_90", config)
        newer = native.finalize_log({"deltaH1": 1.0})
    import_in_process(capsys, tmp_path / "history", "--out", out)
    [imported] = [p for p in imported_logs(out) if p != newer]
    assert os.stat(imported).st_mtime == os.stat(main).st_mtime
    template = asynclog.DetailedLogger(config).settings.filename_template
    removed = layout.prune(str(out), 1, template)
    sidecars = (".alog", "_summary.json", "_config.yaml")
    assert sorted(removed) == sorted(imported.removesuffix(".alog") + suffix for suffix in sidecars)
    assert os.path.exists(newer) and os.path.exists(main)


# --- twice, damaged, hostile ---------------------------------------------------------------------------------
def test_importing_the_same_folder_twice_adds_no_run(tmp_path, capsys):
    for i, level in enumerate(LEVELS):
        write_run(tmp_path / "history", json_logger_data(level, f"/ckpt/step_{i}"))
    status, out, _ = import_in_process(capsys, tmp_path / "history", "--out", tmp_path / "out")
    first = snapshot(tmp_path / "out")
    assert status == 0 and out.count(" -> ") == 4
    status, out, err = import_in_process(capsys, tmp_path / "history", "--out", tmp_path / "out")
    assert status == 0 and err == ""
    assert out.count("already imported: ") == 4 and " -> " not in out and "0 imported, 4 already" in out
    assert {p: v for p, v in snapshot(tmp_path / "out").items() if ".asynclog-index" not in p} == \
        {p: v for p, v in first.items() if ".asynclog-index" not in p}


def test_a_run_imported_into_its_own_folder_takes_the_next_name_and_is_found_again(tmp_path, capsys):
    main = write_run(tmp_path / "logs", json_logger_data("standard"))
    for _ in range(2):
        status, _, err = import_in_process(capsys, tmp_path / "logs", "--out", tmp_path / "logs")
        assert status == 0, err
    [dest] = imported_logs(tmp_path / "logs")
    assert os.path.basename(dest) == "entropy_probe_14-30-25_step_60-1.alog"  # the source's sidecars hold the name
    assert os.path.exists(main.removesuffix(".json.gz") + "_summary.json")


def test_a_truncated_json_gz_is_one_line_naming_it_and_the_others_are_imported(tmp_path):
    good = write_run(tmp_path / "history", json_logger_data("debug", "/ckpt/step_1"))
    bad = write_run(tmp_path / "history", json_logger_data("debug", "/ckpt/step_2"))
    raw = open(bad, "rb").read()
    open(bad, "wb").write(raw[: len(raw) // 2])
    done = asynclog_cli("import", tmp_path / "history", "--out", tmp_path / "out")
    assert done.returncode == cli.DAMAGED
    [line] = done.stderr.splitlines()
    assert bad in line and "cut short" in line and "Traceback" not in done.stderr
    assert good in done.stdout and "1 imported" in done.stdout and "1 skipped" in done.stdout
    assert [os.path.basename(p) for p in imported_logs(tmp_path / "out")] == ["entropy_probe_14-30-25_step_1.alog"]


@pytest.mark.parametrize("text, words", [
    ("[1, 2, 3]", ["an array", "not the object"]),
    ('"text"', ["a string"]),
    ('{"core_results": [1, 2]}', ["core_results", "an array"]),
    ('{"batch_statistics": {"E_batch": 3}}', ["batch_statistics.E_batch", "a number"]),
    ('{"sequences": {"E_batch": {"a": 1}}}', ["sequences.E_batch", "an object", "array"]),
    ('{"raw_tensors": {"E_batch\\n": {"x": [1]}}}', ["raw_tensors", "control character"]),
    ('{"core_results": {"x": 123456789012345678901234567890}}', ["core_results.x", "integer"]),
    ('{"debug_info": {"x": ' + "[" * 200 + "]" * 200 + "}}", ["debug_info.x", "nested"]),
    ('{"debug_info": ' + "[" * 100_000 + "]" * 100_000 + "}", ["nested"]),
    ("{\"core_results\": {", ["not valid JSON"]),
    ("\udcff", ["not UTF-8"]),
])
def test_a_file_that_is_no_run_of_the_json_logger_is_one_clear_line(tmp_path, capsys, text, words):
    raw = text.encode("utf-8", "surrogateescape")
    path = tmp_path / "history" / "entropy_probe_14-30-25_step_60.json.gz"
    path.parent.mkdir()
    path.write_bytes(gzip.compress(raw))
    status, out, err = import_in_process(capsys, path, "--out", tmp_path / "out")
    assert status == cli.DAMAGED
    [line] = err.splitlines()
    assert str(path) in line and "skipped" in line, line
    for word in words:
        assert word in line, line
    assert imported_logs(tmp_path / "out") == []


def test_a_file_larger_than_max_size_once_uncompressed_is_refused_naming_the_option(tmp_path, capsys):
    data = json_logger_data("minimal")
    data["debug_info"] = {"padding": "x" * (3 << 20)}  # gzip makes it a few KiB
    main = write_run(tmp_path / "history", data)
    assert os.path.getsize(main) < 1 << 20
    status, _, err = import_in_process(capsys, tmp_path / "history", "--out", tmp_path / "out", "--max-size", "2")
    assert status == cli.DAMAGED and main in err and "--max-size" in err
    status, _, err = import_in_process(capsys, tmp_path / "history", "--out", tmp_path / "out", "--max-size", "8")
    assert status == 0, err


def test_a_missing_source_is_one_line_and_not_found_before_anything_is_imported(tmp_path, capsys):
    write_run(tmp_path / "history", json_logger_data("minimal"))
    status, out, err = import_in_process(capsys, tmp_path / "history", tmp_path / "nosuch", "--out", tmp_path / "out")
    assert status == cli.NOT_FOUND and "nosuch" in err and len(err.splitlines()) == 1
    assert imported_logs(tmp_path / "out") == []


def test_a_folder_without_runs_says_so_and_succeeds(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.json").write_text("{}")
    status, out, err = import_in_process(capsys, tmp_path / "empty", "--out", tmp_path / "out")
    assert status == 0 and "no runs" in out and err == ""


def test_two_imports_of_one_folder_at_once_write_each_run_once(tmp_path):
    for i in range(6):
        write_run(tmp_path / "history", json_logger_data(LEVELS[i % 4], f"/ckpt/step_{i}"))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "asynclog", "import", str(tmp_path / "history"), "--out", str(tmp_path / "out")]
    both = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outs = [p.communicate(timeout=180)[0] for p in both]
    assert [p.returncode for p in both] == [0, 0]
    assert sum(out.count(" -> ") for out in outs) == 6 and sum(out.count("already imported: ") for out in outs) == 6
    assert len(imported_logs(tmp_path / "out")) == 6
