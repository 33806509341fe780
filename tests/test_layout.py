"""asynclog.layout: run folders and names, sanitising, the README, retention of asynclog's own files only."""

from __future__ import annotations

import os
import string
from datetime import datetime

import pytest

import asynclog
from asynclog import layout

NOW = datetime(2025, 1, 15, 10, 30, 0)
TEMPLATE = "entropy_probe_{timestamp}_{checkpoint_name}.json"
SAFE = set(string.ascii_letters + string.digits + "._-")


def test_run_paths_follow_the_plans_layout(tmp_path):
    paths = layout.run_paths(tmp_path / "logs", TEMPLATE, "/ckpts/run1/step_60/", "debug", now=NOW)
    day = tmp_path / "logs" / "2025-01-15"
    assert paths.day_dir == str(day) and day.is_dir()
    assert paths.main == str(day / "entropy_probe_10-30-00_step_60.alog")
    assert paths.summary == str(day / "entropy_probe_10-30-00_step_60_summary.json")
    assert paths.config == str(day / "entropy_probe_10-30-00_step_60_config.yaml")


@pytest.mark.parametrize("template, expected", [
    ("entropy_probe_{timestamp}_{checkpoint_name}.json.gz", "entropy_probe_10-30-00_step_60.alog"),
    ("probe_{checkpoint_name}", "probe_step_60.alog"),
    ("{date}_{level}_{checkpoint_name}.alog", "2025-01-15_standard_step_60.alog"),
    ("{checkpoint_name}.JSON", "step_60.alog"),
])
def test_template_suffix_becomes_alog(tmp_path, template, expected):
    paths = layout.run_paths(tmp_path, template, "step_60", "standard", now=NOW)
    assert os.path.basename(paths.main) == expected


@pytest.mark.parametrize("template, word", [
    ("probe_{run_id}.json", "run_id"),
    ("../{checkpoint_name}.json", "path"),
    ("sub/{checkpoint_name}.json", "path"),
])
def test_bad_template_is_a_config_error_naming_the_key(tmp_path, template, word):
    with pytest.raises(asynclog.ConfigError, match="filename_template") as info:
        layout.run_paths(tmp_path, template, "step_60", "standard", now=NOW)
    assert word in str(info.value)


HOSTILE = [
    "../../etc", "..", ".", "", "/", "a/b", "a\\b", "../../../../../../tmp/x", "step\x00_60", "\u202eetc",
    "\u200fstep", "ｓｔｅｐ／..／..／etc", "\u2215etc\u2215passwd", "..\u2044..", "line\nbreak", "x" * 500,
    "\x1b[31mred", "~", "-rf", None,
]


@pytest.mark.parametrize("checkpoint", HOSTILE, ids=repr)
def test_hostile_checkpoint_names_stay_in_the_day_folder(tmp_path, checkpoint):
    paths = layout.run_paths(tmp_path, TEMPLATE, checkpoint, "debug", now=NOW)
    for path in paths[2:]:
        assert os.path.dirname(path) == paths.day_dir
        name = os.path.basename(path)
        assert set(name) <= SAFE, name
        assert not name.startswith((".", "-")) and len(name) < 150
    assert os.listdir(tmp_path) == ["2025-01-15"]


def test_sanitize_keeps_plain_names_and_never_returns_empty():
    assert layout.sanitize_name("step_60") == "step_60"
    assert layout.sanitize_name("checkpoint-1200.v2") == "checkpoint-1200.v2"
    assert layout.sanitize_name("") == "checkpoint"
    assert layout.sanitize_name("..") == "checkpoint"
    assert layout.sanitize_name("\u202e\u200f\x00") == "checkpoint"
    assert layout.sanitize_name("a/../b") == "a_.._b"  # one component: no separator survives


def test_checkpoint_name_is_the_last_path_component():
    assert layout.checkpoint_name("/ckpts/run1/step_60") == "step_60"
    assert layout.checkpoint_name("/ckpts/run1/step_60/") == "step_60"
    assert layout.checkpoint_name("C:\\ckpts\\step_7") == "step_7"
    assert layout.checkpoint_name(None) == "checkpoint"


def test_a_taken_name_gets_a_numbered_one(tmp_path):
    first = layout.run_paths(tmp_path, TEMPLATE, "step_60", "debug", now=NOW)
    open(first.main, "wb").close()
    second = layout.run_paths(tmp_path, TEMPLATE, "step_60", "debug", now=NOW)
    assert os.path.basename(second.main) == "entropy_probe_10-30-00_step_60-1.alog"
    open(second.summary, "w").close()  # any of the three files taken counts
    third = layout.run_paths(tmp_path, TEMPLATE, "step_60", "debug", now=NOW)
    assert os.path.basename(third.main) == "entropy_probe_10-30-00_step_60-2.alog"


def test_readme_is_written_once_and_never_overwritten(tmp_path):
    path = layout.ensure_readme(str(tmp_path))
    text = open(path).read()
    assert "docs/FORMAT.md" in text and "asynclog cat" in text
    with open(path, "w") as f:
        f.write("my notes")
    layout.ensure_readme(str(tmp_path))
    assert open(path).read() == "my notes"


# --- retention ---------------------------------------------------------------------------------------------
def _fake_run(folder, stem: str, mtime: float, magic: bool = True, sidecars: bool = True) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    main = os.path.join(folder, stem + ".alog")
    with open(main, "wb") as f:
        f.write((b"ASYNCLOG" if magic else b"NOTALOG!") + b"\x01\x00\x00\x00" + bytes(64))
    files = [main]
    if sidecars:
        for suffix in ("_summary.json", "_config.yaml"):
            files.append(os.path.join(folder, stem + suffix))
            with open(files[-1], "w") as f:
                f.write("{}")
    for path in files:
        os.utime(path, (mtime, mtime))
    return files


def _all_files(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}


def test_retention_removes_only_asynclogs_oldest_runs_and_their_sidecars(tmp_path):
    root = tmp_path / "logs"
    day1, day2 = root / "2025-01-14", root / "2025-01-15"
    real = asynclog.start(str(day1), name="real_run", level="minimal")
    real.event("core_results", bars_dot=1.0)
    real_path = real.close()
    os.utime(real_path, (1000, 1000))  # the oldest: a real asynclog log, recognised by its header
    _fake_run(day1, "run_b", 2000)
    _fake_run(day2, "run_c", 3000)
    _fake_run(day2, "run_d", 4000)
    _fake_run(day2, "run_e", 5000)
    foreign = [
        _fake_run(day1, "not_ours", 500, magic=False)[0],           # .alog without the magic: not ours
        _fake_run(root / "archive", "kept_elsewhere", 100)[0],      # not a day folder: never looked at
        _fake_run(root, "at_root", 100)[0],                         # in the root itself: never looked at
    ]
    for path in (day1 / "notes.txt", day2 / "orphan_summary.json"):
        path.write_text("mine")
        os.utime(path, (10, 10))
    outside = _fake_run(tmp_path / "elsewhere", "linked", 50, sidecars=False)[0]
    os.symlink(outside, day1 / "link.alog")  # a link is never followed, let alone removed
    before = _all_files(root)

    removed = layout.prune(str(root), keep=2)

    gone = {os.path.relpath(p, root) for p in removed}
    assert gone == {"2025-01-14/real_run.alog", "2025-01-14/run_b.alog", "2025-01-14/run_b_summary.json",
                    "2025-01-14/run_b_config.yaml", "2025-01-15/run_c.alog", "2025-01-15/run_c_summary.json",
                    "2025-01-15/run_c_config.yaml"}
    assert _all_files(root) == before - gone
    assert all(os.path.exists(p) for p in foreign) and os.path.exists(outside)
    assert (day1 / "notes.txt").read_text() == "mine" and os.path.islink(day1 / "link.alog")


def test_retention_never_removes_the_protected_run(tmp_path):
    oldest = _fake_run(tmp_path / "2025-01-15", "oldest", 1000)[0]
    _fake_run(tmp_path / "2025-01-15", "newer", 2000)
    _fake_run(tmp_path / "2025-01-15", "newest", 3000)
    removed = layout.prune(str(tmp_path), keep=1, protect=oldest)
    assert os.path.exists(oldest)
    assert {os.path.basename(p) for p in removed} == {"newer.alog", "newer_summary.json", "newer_config.yaml"}


def test_retention_removes_a_day_folder_it_empties_and_only_that(tmp_path):
    _fake_run(tmp_path / "2025-01-14", "old", 1000)
    _fake_run(tmp_path / "2025-01-13", "old2", 900)
    (tmp_path / "2025-01-13" / "keep.txt").write_text("x")
    _fake_run(tmp_path / "2025-01-15", "new", 2000)
    layout.prune(str(tmp_path), keep=1)
    assert not (tmp_path / "2025-01-14").exists()
    assert sorted(os.listdir(tmp_path / "2025-01-13")) == ["keep.txt"]


def test_max_files_zero_keeps_everything(tmp_path):
    for i in range(3):
        _fake_run(tmp_path / "2025-01-15", f"run{i}", 1000 + i)
    assert layout.prune(str(tmp_path), keep=0) == []
    assert len(os.listdir(tmp_path / "2025-01-15")) == 9


def test_is_asynclog_file_reads_the_magic_not_the_name(tmp_path):
    ours = _fake_run(tmp_path, "ours", 1, sidecars=False)[0]
    theirs = _fake_run(tmp_path, "theirs", 1, magic=False, sidecars=False)[0]
    renamed = tmp_path / "ours.txt"
    renamed.write_bytes(open(ours, "rb").read())
    assert layout.is_asynclog_file(ours)
    assert not layout.is_asynclog_file(theirs)
    assert not layout.is_asynclog_file(str(renamed))
    assert not layout.is_asynclog_file(str(tmp_path / "missing.alog"))
