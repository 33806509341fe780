"""asynclog.probe.layout: run folders and names, sanitising, the README, retention of asynclog's own files only."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import string
import struct
import subprocess
import sys
import time
import tracemalloc
from datetime import datetime

import pytest

import asynclog
import asynclog._format
from asynclog import DetailedLogger
from asynclog.probe import layout
from asynclog._ranks import SHARD_STEM, shard_name

from conftest import spawn_script

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


@pytest.mark.parametrize("path, expected", [
    ("/ckpts/run1/step_60", "step_60"),
    ("/ckpts/run1/step_60/", "step_60"),
    ("C:\\ckpts\\step_7", "step_7"),
    (None, "checkpoint"),
    ("tmp/checkpoints/step_60/model", "step_60"),  # the user's layout: a LoRA adapter folder per step
    ("tmp/checkpoints/step_120/model/", "step_120"),
    ("C:\\ckpts\\step_7\\Model", "step_7"),
    ("/out/checkpoints/global_step_120/actor/huggingface", "global_step_120"),
    ("/out/run/checkpoint-500/adapter_model.safetensors", "checkpoint-500"),
    ("/out/run/checkpoint-500/pytorch_model.bin", "checkpoint-500"),
    ("runs/exp1/lora/final", "exp1"),
    ("/models/Qwen2.5-7B", "Qwen2.5-7B"),
    ("/ckpt/step_60/./model/..", "step_60"),
    ("/ckpt/step_60/model/../../step_120/model", "step_120"),
    ("/ckpt/step_60/..", "ckpt"),
    ("model", "model"),  # nothing informative: the last component
    ("checkpoints/latest/", "latest"),
])
def test_checkpoint_name_is_the_nearest_informative_path_component(path, expected):
    assert layout.checkpoint_name(path) == expected
    assert layout.checkpoint_name(path, "auto") == expected


def test_checkpoint_name_last_is_the_last_path_component():
    assert layout.checkpoint_name("tmp/checkpoints/step_60/model", "last") == "model"
    assert layout.checkpoint_name("/ckpts/run1/step_60/", "last") == "step_60"
    assert layout.checkpoint_name(None, "last") == "checkpoint"


@pytest.mark.parametrize("rule, expected", [
    (r"step_\d+", "step_60"),  # the whole match
    (r"step_(\d+)", "60"),  # the first group
    (r"(step)_(\d+)", "step"),
    (r"global_step_(\d+)", "step_60"),  # no match: auto
    (r"(x*)/model", "step_60"),  # an empty match names nothing: auto
    (r"run\d", "run1"),
])
def test_checkpoint_name_from_a_regular_expression(rule, expected):
    assert layout.checkpoint_name("/ckpts/run1/step_60/model", rule) == expected


def test_a_regular_expression_takes_its_match_nearest_the_end():
    assert layout.checkpoint_name("/exp/step_5_warmup/step_60/model", r"step_\d+") == "step_60"


@pytest.mark.parametrize("rule", ["step_(\\d+", "[", "(?P<x>a)(?P<x>b)", 3, None])
def test_a_bad_checkpoint_name_rule_is_a_config_error_naming_the_key(rule):
    with pytest.raises(asynclog.ConfigError, match="checkpoint_name"):
        asynclog.config.check_checkpoint_rule(rule)


def test_run_paths_name_the_run_by_the_checkpoint_rule(tmp_path):
    checkpoint = str(tmp_path / "checkpoints" / "step_60" / "model")
    names = {rule: os.path.basename(layout.run_paths(tmp_path / "logs", TEMPLATE, checkpoint, "debug", now=NOW,
                                                     checkpoint_rule=rule).main)
             for rule in ("auto", "last", r"step_(\d+)")}
    assert names == {"auto": "entropy_probe_10-30-00_step_60.alog", "last": "entropy_probe_10-30-00_model.alog",
                     r"step_(\d+)": "entropy_probe_10-30-00_60.alog"}


@pytest.mark.parametrize("rule", ["auto", "last", "(.*)", r"ckpt/(.*)/model"])
@pytest.mark.parametrize("checkpoint", ["/ckpt/../../etc/model", "/ckpt/\u202eetc/model", "/ckpt/a\x00b/model",
                                        "/ckpt/ｓｔｅｐ／..／..／etc/model", "/ckpt/../model"], ids=repr)
def test_hostile_checkpoint_names_stay_in_the_day_folder_under_every_rule(tmp_path, rule, checkpoint):
    paths = layout.run_paths(tmp_path, TEMPLATE, checkpoint, "debug", now=NOW, checkpoint_rule=rule)
    for path in paths[2:]:
        assert os.path.dirname(path) == paths.day_dir
        assert set(os.path.basename(path)) <= SAFE, path
    assert os.listdir(tmp_path) == ["2025-01-15"]


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
OTHER = "other_probe_{checkpoint_name}.json"
DAY_AGO = 24 * 3600


def _config(root, template: str = TEMPLATE, max_files: int = 0) -> dict:
    return {"detailed_logging": {"enabled": True, "level": "minimal", "output_directory": str(root),
                                 "filename_template": template, "max_files": max_files},
            "asynclog": {"staging_bytes": 16 << 20}}


def _age(paths, mtime: float) -> None:
    for path in paths if isinstance(paths, list) else [paths]:
        os.utime(path, (mtime, mtime), follow_symlinks=False)


def _run_files(main: str) -> list[str]:
    stem = main.removesuffix(".alog")
    return [main, stem + "_summary.json", stem + "_config.yaml"]


def _probe_runs(root, count: int, template: str = TEMPLATE, first_mtime: float = 1000) -> list[str]:
    """``count`` finished runs of a DetailedLogger that keeps every run, aged oldest first from ``first_mtime``."""
    config = _config(root, template)
    logger = DetailedLogger(config)
    mains = []
    for i in range(count):
        mains.append(logger.log_run_start(f"step_{i}", config))
        logger.finalize_log({"bars_dot": 1.0})
    for i, main in enumerate(mains):
        _age(_run_files(main), first_mtime + i)
    return mains


def _all_files(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}


def _rel(paths, root) -> set[str]:
    return {os.path.relpath(p, root) for p in paths}


def _cut_footer(main: str) -> None:
    """Leave the log as a crash of the whole machine would: frames without footer and trailer."""
    with open(main, "r+b") as f:
        f.truncate(asynclog._format.read_trailer(f))


def test_retention_removes_the_oldest_runs_with_their_sidecars(tmp_path):
    root = tmp_path / "logs"
    mains = _probe_runs(root, 4)
    old_day = root / "2025-01-14"
    old_day.mkdir()
    for path in _run_files(mains[0]):  # the oldest run lives in an older day folder
        os.rename(path, old_day / os.path.basename(path))
    mains[0] = str(old_day / os.path.basename(mains[0]))
    before = _all_files(root)

    removed = layout.prune(str(root), keep=2, template=TEMPLATE)

    assert _rel(removed, root) == _rel(_run_files(mains[0]) + _run_files(mains[1]), root)
    assert _all_files(root) == before - _rel(removed, root)
    assert not old_day.exists()  # emptied, so removed
    assert all(os.path.exists(p) for p in _run_files(mains[2]) + _run_files(mains[3]))


def test_retention_keeps_a_users_own_asynclog_log_and_its_look_alike_sidecars(tmp_path):
    root = tmp_path / "logs"
    mains = _probe_runs(root, 2, first_mtime=2000)
    day = os.path.dirname(mains[0])
    own = asynclog.start(day, name="my_notes", level="minimal")
    own.event("note", text="mine")
    mine = _run_files(own.close())
    for sidecar in mine[1:]:
        with open(sidecar, "w") as f:
            f.write("mine")
    _age(mine, 1000)  # older than every run of the probe's

    removed = layout.prune(str(root), keep=1, template=TEMPLATE)

    assert removed == _run_files(mains[0])
    assert all(os.path.exists(p) for p in mine)


def test_retention_keeps_another_loggers_runs_sharing_the_folder(tmp_path):
    root = tmp_path / "logs"
    theirs = _probe_runs(root, 2, template=OTHER, first_mtime=1000)
    ours = _probe_runs(root, 2, first_mtime=2000)
    config = _config(root, max_files=2)
    logger = DetailedLogger(config)
    newest = logger.log_run_start("step_9", config)  # retention runs here, as in the probe
    logger.finalize_log({})
    assert [os.path.exists(p) for p in ours + [newest]] == [False, True, True]
    assert all(os.path.exists(p) for main in theirs for p in _run_files(main))


def test_retention_keeps_a_run_that_has_another_name(tmp_path):
    root, archive = tmp_path / "logs", tmp_path / "archive"
    archive.mkdir()
    mains = _probe_runs(root, 4)
    os.link(mains[0], archive / "kept.alog")  # a hard link: someone else's name for the same data
    os.link(_run_files(mains[1])[2], archive / "kept_config.yaml")  # a sidecar's, likewise
    copy = os.path.join(os.path.dirname(mains[1]), "copy_of_step_1.alog")
    with open(mains[1], "rb") as src, open(copy, "wb") as dst:
        dst.write(src.read())  # a copy under another name: its marker names another stem
    _age(copy, 500)

    removed = layout.prune(str(root), keep=1, template=TEMPLATE)

    assert os.path.exists(mains[0]) and os.path.samefile(mains[0], archive / "kept.alog")
    assert os.path.exists(copy) and os.path.exists(_run_files(mains[1])[2])
    assert _rel(removed, root) == _rel(_run_files(mains[1])[:2] + _run_files(mains[2]), root)


def test_retention_follows_no_symlink(tmp_path):
    root, elsewhere = tmp_path / "logs", tmp_path / "elsewhere"
    outside = _probe_runs(elsewhere, 2, first_mtime=100)
    mains = _probe_runs(root, 3, first_mtime=1000)
    day = os.path.dirname(mains[0])
    os.symlink(os.path.dirname(outside[0]), root / "2025-01-01")           # a day folder that is a link
    os.symlink(outside[0], os.path.join(day, "linked.alog"))               # a log that is a link
    summary = _run_files(mains[0])[1]
    os.replace(summary, elsewhere / "precious.json")
    os.symlink(elsewhere / "precious.json", summary)                       # a sidecar that is a link
    _age([os.path.join(day, "linked.alog"), summary], 10)
    before = _all_files(elsewhere)

    removed = layout.prune(str(root), keep=1, template=TEMPLATE)

    assert summary not in removed and os.path.islink(summary)
    assert _rel(removed, root) == _rel([mains[0], _run_files(mains[0])[2]] + _run_files(mains[1]), root)
    assert os.path.islink(os.path.join(day, "linked.alog")) and os.path.islink(root / "2025-01-01")
    assert _all_files(elsewhere) == before


@pytest.mark.parametrize("meta_len, body_len", [(64 << 20, 0), (16, 1 << 40)], ids=["huge meta", "huge body"])
def test_retention_never_reads_a_huge_header_frame(tmp_path, meta_len, body_len):
    _probe_runs(tmp_path, 1, first_mtime=2000)
    hostile = tmp_path / "2025-01-01" / "hostile.alog"
    hostile.parent.mkdir()
    head = struct.pack("<4sBBHIQQ", b"ALFR", 1, 0, 0, meta_len, body_len, 0)
    with open(hostile, "wb") as f:
        checksum = asynclog._format.checksum(asynclog._format.FORMAT_VERSION)
        f.write(asynclog._format.PREAMBLE + head + struct.pack("<I", checksum(head)))
        f.truncate(80 << 20)  # sparse: the huge meta is there, as zeros
    _age(str(hostile), 1000)
    tracemalloc.start()
    try:
        removed = layout.prune(str(tmp_path), keep=1, template=TEMPLATE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert hostile.exists() and removed == []
    assert peak < 8 << 20


def test_retention_keeps_a_run_another_process_is_still_writing(tmp_path):
    root = tmp_path / "logs"
    child = spawn_script(f"""
        import sys
        from asynclog import DetailedLogger
        config = {_config(root)!r}
        logger = DetailedLogger(config)
        print(logger.log_run_start("step_open", config), flush=True)
        sys.stdin.readline()
        print(logger.finalize_log({{"bars_dot": 1.0}}), flush=True)
    """, stdin=subprocess.PIPE)
    try:
        open_run = child.stdout.readline().strip()
        assert open_run.endswith(".alog"), child.stderr.read()
        now = time.time()
        _age(open_run, now - 3600)  # the oldest run, and still open
        mains = _probe_runs(root, 2, first_mtime=now - 60)

        removed = layout.prune(str(root), keep=1, template=TEMPLATE)

        assert removed == _run_files(mains[0])
        child.stdin.write("finish\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == open_run
    finally:
        child.stdin.close()  # a child still waiting reads the end of its input and finishes
        child.wait(30)
    with asynclog.open(open_run) as log:
        assert log.complete


def test_retention_removes_an_unclosed_run_only_once_it_is_stale(tmp_path):
    now = time.time()
    mains = _probe_runs(tmp_path, 3, first_mtime=now - 100)
    for main in mains[:2]:
        _cut_footer(main)
    _age(_run_files(mains[0]), now - 30 * DAY_AGO)  # the writer's host crashed a month ago
    _age(_run_files(mains[1]), now - 3600)  # or another process is still writing it

    removed = layout.prune(str(tmp_path), keep=1, template=TEMPLATE)

    assert removed == _run_files(mains[0])
    assert all(os.path.exists(p) for p in _run_files(mains[1]))


def test_the_run_being_opened_counts_as_one_of_the_kept(tmp_path):
    mains = _probe_runs(tmp_path, 3)
    opening = os.path.join(os.path.dirname(mains[0]), "entropy_probe_opening.alog")
    open(opening, "wb").close()  # its header may not be on disk yet
    removed = layout.prune(str(tmp_path), keep=2, template=TEMPLATE, protect=opening)
    assert removed == _run_files(mains[0]) + _run_files(mains[1])
    assert os.path.exists(opening) and os.path.exists(mains[2])


def test_max_files_zero_keeps_everything(tmp_path):
    mains = _probe_runs(tmp_path, 2)
    assert layout.prune(str(tmp_path), keep=0, template=TEMPLATE) == []
    assert all(os.path.exists(p) for main in mains for p in _run_files(main))


def test_a_symlinked_day_folder_is_refused_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "logs"
    root.mkdir()
    now = datetime(2026, 1, 2, 3, 4, 5)
    (root / "2026-01-02").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(FileExistsError, match="symlink"):
        layout.run_paths(root, "entropy_probe_{timestamp}_{checkpoint_name}.json", "/ckpt/step_1", "debug", now=now)
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("where", ["elsewhere/2026-01-02/run", "logs/run", "logs/2026-01-02/../../elsewhere/run"])
def test_a_run_folder_outside_the_output_directory_is_refused_before_it_is_made(tmp_path, where):
    (tmp_path / "logs").mkdir()
    folder = os.path.join(tmp_path, where)  # as a broadcast from rank 0 might bring it
    with pytest.raises(FileExistsError, match="outside"):
        layout.rank_run_paths_in(tmp_path / "logs", folder, 1)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["logs"]


# --- what retention reads ----------------------------------------------------------------------------------
@functools.cache
def _open_listeners() -> list[list[str]]:
    """The lists the audit hook fills with every opened path; a hook cannot be removed, so it is added once."""
    listeners: list[list[str]] = []

    def hook(event: str, args: tuple) -> None:
        if event == "open" and listeners and isinstance(args[0], (str, bytes)):
            for opened in listeners:
                opened.append(os.path.basename(os.fsdecode(args[0])))

    sys.addaudithook(hook)
    return listeners


@contextlib.contextmanager
def _shards_opened():
    """The names of the rank shards opened inside the block, once per open."""
    opened: list[str] = []
    _open_listeners().append(opened)
    try:
        yield opened
    finally:
        _open_listeners().remove(opened)
        opened[:] = [name for name in opened if re.fullmatch(rf"{SHARD_STEM}\.alog", name)]


def _rank_runs(root, shards: list[int], first_mtime: float = 1000) -> list[str]:
    """One finished run folder per entry of ``shards`` (how many rank shards it holds), aged oldest first.

    Ranks 0 and 1 log for real; the other ranks' shards are copies of rank 1's: closed logs, each its own file.
    """
    config = _config(root)
    loggers = [DetailedLogger(config, rank=rank, world_size=max(shards), run_name="job") for rank in (0, 1)]
    folders = []
    for i, count in enumerate(shards):
        folders.append([logger.log_run_start(f"step_{i}") for logger in loggers][0])
        for logger in loggers:
            logger.finalize_log({})
        for rank in range(2, count):
            shutil.copyfile(os.path.join(folders[-1], "rank-00001.alog"), os.path.join(folders[-1], shard_name(rank)))
    for i, folder in enumerate(folders):
        _age([os.path.join(folder, name) for name in os.listdir(folder)], first_mtime + i)
    return folders


def test_retention_opens_only_rank_0s_shard_of_a_run_it_keeps(tmp_path):
    runs, ranks = 5, 8
    _rank_runs(tmp_path, [ranks] * runs)
    with _shards_opened() as opened:
        assert layout.prune(str(tmp_path), keep=runs, template=TEMPLATE) == []
    assert opened == [shard_name(0)] * runs  # the marker, once per run; the others are only stat'ed


def test_retention_reads_footers_only_of_the_runs_about_to_go(tmp_path):
    now = time.time()
    doomed, unclosed, *newest = _rank_runs(tmp_path, [4, 2, 4, 4], first_mtime=now - 600)
    writing = os.path.join(unclosed, shard_name(1))  # rank 1 of an older job is still writing, or so it seems
    mtime = os.stat(writing).st_mtime
    _cut_footer(writing)
    _age(writing, mtime)
    gone = {os.path.join(doomed, name) for name in os.listdir(doomed)}

    with _shards_opened() as opened:
        removed = layout.prune(str(tmp_path), keep=2, template=TEMPLATE)

    assert set(removed) == gone and not os.path.exists(doomed)
    assert os.path.isdir(unclosed) and len(os.listdir(unclosed)) == len(os.listdir(newest[0])) - 2
    # Shards 2 and 3 exist in the doomed run and the two newest: only the doomed run's were opened.
    assert opened.count(shard_name(2)) == opened.count(shard_name(3)) == 1


def test_retention_removes_the_shards_of_ranks_past_99999(tmp_path):
    doomed, kept = _rank_runs(tmp_path, [2, 2])
    for name in (shard_name(100000), "rank-100000_summary.json"):  # rank 100000 of a world that large
        shutil.copyfile(os.path.join(doomed, shard_name(1)), os.path.join(doomed, name))
    _age([os.path.join(doomed, name) for name in os.listdir(doomed)], 1000)
    removed = layout.prune(str(tmp_path), keep=1, template=TEMPLATE)
    assert {os.path.join(doomed, shard_name(100000)), os.path.join(doomed, "rank-100000_summary.json")} <= set(removed)
    assert not os.path.exists(doomed) and os.path.isdir(kept)
