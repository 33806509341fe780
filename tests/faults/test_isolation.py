"""Bad names and values stay at the call site and harm no other run; the writer stays free of torch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import asynclog
from faults.workload import maps_mention, reaper  # noqa: F401 - reaper is a fixture

TOO_LONG = ["x" * 201, "é" * 101]  # 201 and 202 bytes of UTF-8
LONGEST = "y" * 200


def refused(*args, **kwargs) -> bool:
    """Whether ``asynclog.start`` refuses these arguments at the call site; a run it opens is closed."""
    try:
        run = asynclog.start(*args, **kwargs)
    except (asynclog.LogInputError, FileExistsError):
        return True
    run.close()
    return False


def names_in(path) -> list[str]:
    with asynclog.open(path) as log:
        assert log.complete, log.footer
        return [record["name"] for record in log.events()]


def test_run_name_with_nul_is_refused_and_other_runs_go_on(logdir):
    with asynclog.start(logdir, name="bystander") as bystander:
        bystander.event("before")
        with pytest.raises(asynclog.LogInputError):
            asynclog.start(logdir, name="a\x00b")
        bystander.event("after")
    assert names_in(bystander.path) == ["before", "after"]


@pytest.mark.parametrize("kind", ["parent", "absolute", "slash"])
def test_run_name_cannot_leave_its_directory(tmp_path, kind):
    logs = tmp_path / "logs"
    logs.mkdir()
    name = {"parent": "../x", "absolute": str(tmp_path / "abs"), "slash": "sub/x"}[kind]
    before = set(tmp_path.rglob("*"))
    try:
        run = asynclog.start(logs, name=name)
    except asynclog.LogInputError:
        pass
    else:
        run.close()
        assert Path(run.path).resolve().is_relative_to(logs.resolve()), run.path
    created = set(tmp_path.rglob("*")) - before
    assert all(path.is_relative_to(logs) for path in created), f"created outside {logs}: {created}"


def test_dangling_symlink_where_the_log_goes_is_not_followed(tmp_path, logdir):
    target = tmp_path / "elsewhere" / "target"
    target.parent.mkdir()
    (logdir / "linked.alog").symlink_to(target)
    try:
        with pytest.warns(asynclog.NameTakenWarning):  # the link takes the name: the run gets linked-1.alog
            run = asynclog.start(logdir, name="linked")
    except (asynclog.AsyncLogError, OSError):
        pass
    else:
        run.event("x")
        run.close()
    assert not target.exists(), "the log was written through a symlink"
    assert (logdir / "linked.alog").is_symlink()


def test_second_start_on_an_open_runs_path_refuses_and_keeps_the_first(logdir):
    path = logdir / "same.alog"
    first = asynclog.start(path=path)
    first.event("one")
    first.flush(durable=True)
    second_refused = refused(path=path)
    first.event("two")
    first.close()
    assert second_refused, "a second start(path=...) on an open run's file must raise"
    assert names_in(path) == ["one", "two"]


def test_existing_log_is_replaced_only_with_overwrite(logdir):
    path = logdir / "again.alog"
    with asynclog.start(path=path) as run:
        run.event("old")
    assert refused(path=path), "start(path=...) on an existing log must raise without overwrite=True"
    assert names_in(path) == ["old"]
    with asynclog.start(path=path, overwrite=True) as run:
        run.event("new")
    assert names_in(path) == ["new"]


def test_names_over_200_bytes_are_refused(logdir):
    for name in TOO_LONG:
        assert refused(logdir, name=name), f"a run name of {len(name.encode())} bytes must raise LogInputError"
    with asynclog.start(logdir, name=LONGEST) as run:
        for name in TOO_LONG:
            with pytest.raises(asynclog.LogInputError):
                run.stream(name)
            with pytest.raises(asynclog.LogInputError):
                run.tensor(name, torch.zeros(2))
        run.stream(LONGEST).append(a=1)
        run.tensor(LONGEST, torch.zeros(2))
    with asynclog.open(run.path) as log:
        assert log.complete and log.stream_names() == [LONGEST] and log.tensor_names() == [LONGEST]


def test_recursive_and_deeply_nested_values_raise_log_input_error(logdir):
    looped: dict = {}
    looped["self"] = looped
    deep: list = []
    inner = deep
    for _ in range(100_000):
        inner.append([])
        inner = inner[0]
    with asynclog.start(logdir, name="nested") as run:
        run.event("before")
        for value in (looped, deep):
            with pytest.raises(asynclog.LogInputError):
                run.event("x", d=value)
        run.event("after")
    assert names_in(run.path) == ["before", "after"]


def test_writer_process_loads_no_torch(tmp_path, reaper):
    probe = reaper.probe("idle", tmp_path)
    _, (writer,) = probe.expect("ready")
    writer = reaper.track(int(writer))
    assert maps_mention(probe.pid, "/torch/"), "the probe has torch loaded: the check must see it there"
    loaded = maps_mention(writer, "/torch/")
    assert not loaded, f"the writer process maps torch: {loaded[:3]}"
    probe.process.stdin.write("\n")
    probe.process.stdin.flush()
    assert probe.wait(30) == 0, probe.tail()
    assert names_in(tmp_path / "idle.alog") == ["hello"]
