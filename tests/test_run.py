"""The probe-side contract: bad input fails at the call site and loses nothing; strict lifecycle; one writer."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import asynclog


class Opaque:
    pass


BAD_EVENTS = [
    ({"value": Opaque()}, "Opaque"),
    ({"nested": {1: "int key"}}, "keys must be str"),
    ({"deep": [{"ok": {None: 1}}]}, "keys must be str"),
    ({"ordered": collections.OrderedDict({(1, 2): 3})}, "keys must be str"),  # a dict subclass, top level
    ({"deep": [collections.defaultdict(int, {7: 1})]}, "keys must be str"),  # and inside a list
    ({"huge": 2**64}, "2\\*\\*64"),
    ({"text": "x" * (80 << 20)}, "records frame"),  # would make its frame, and the records around it, unreadable
    ({"tensor": torch.zeros(1000)}, "run.tensor"),
]


def test_bad_input_raises_at_the_call_site_and_loses_nothing(logdir):
    with asynclog.start(logdir, name="bad") as run:
        run.event("before", i=1)
        for fields, message in BAD_EVENTS:
            with pytest.raises(asynclog.LogInputError, match=message):
                run.event("bad", **fields)
        with pytest.raises(asynclog.LogInputError, match="layout"):
            run.tensor("sparse", torch.eye(3).to_sparse())
        with pytest.raises(asynclog.LogInputError, match="meta"):
            run.tensor("meta", torch.empty(3, device="meta"))
        with pytest.raises(asynclog.LogInputError, match="torch.Tensor"):
            run.tensor("list", [1, 2, 3])
        with pytest.raises(asynclog.LogInputError):
            run.event(42)
        stream = run.stream("s")
        stream.append(a=torch.ones(2), b="x")
        with pytest.raises(asynclog.LogInputError, match="columns"):
            stream.append(a=torch.ones(2))
        with pytest.raises(asynclog.LogInputError, match="holds"):
            stream.append(a=torch.ones(2, dtype=torch.int64), b="x")
        with pytest.raises(asynclog.LogInputError):
            stream.append(a=torch.ones(2), b=Opaque())
        stream.append(a=torch.zeros(3), b="y")
        run.event("after", i=2, small=torch.tensor([1.5, 2.5]), scalar=np.float32(0.5))
    with asynclog.open(run.path) as log:
        events = list(log.events())
        rows = list(log.rows("s"))
    assert [e["name"] for e in events] == ["before", "after"]
    assert events[1]["data"] == {"i": 2, "small": [1.5, 2.5], "scalar": 0.5}
    assert [r["b"] for r in rows] == ["x", "y"] and torch.equal(rows[1]["a"], torch.zeros(3))
    cat = subprocess.run([sys.executable, "-m", "asynclog", "cat", str(run.path)], capture_output=True, text=True)
    assert cat.returncode == 0 and cat.stderr == "", cat.stderr  # every record is valid JSON for jq


def test_calls_on_a_closed_run_raise_and_close_twice_is_safe(logdir):
    run = asynclog.start(logdir, name="closed")
    stream = run.stream("s")
    path = run.close()
    assert run.close() == path and run.closed
    for call in (lambda: run.event("x"), lambda: run.tensor("t", torch.ones(1)), lambda: run.phase("p"),
                 lambda: run.stream("s2"), lambda: stream.append(a=1), lambda: run.flush()):
        with pytest.raises(asynclog.ClosedError):
            call()


def test_context_manager_records_why_it_closed(logdir):
    with pytest.raises(RuntimeError):
        with asynclog.start(logdir, name="raised") as run:
            run.event("x")
            raise RuntimeError("probe failed")
    with asynclog.open(run.path) as log:
        assert log.complete and log.footer["reason"] == "closed by RuntimeError"


def test_many_runs_in_one_process_share_one_writer_and_leak_no_fds(logdir, full):
    count = 1000 if full else 200
    first = asynclog.start(logdir, name="r0")
    first.tensor("t", torch.ones(10))
    first.close()
    writer = first._channel.process.pid
    fds = len(os.listdir("/proc/self/fd"))
    for i in range(1, count):
        with asynclog.start(logdir, name=f"r{i}") as run:
            run.event("e", i=i)
            run.tensor("t", torch.full((10,), i))
            run.stream("s").append(i=i)
        assert run._channel.process.pid == writer
    assert len(os.listdir("/proc/self/fd")) == fds
    with asynclog.open(logdir / f"r{count - 1}.alog") as log:
        assert log.tensor("t")[0].item() == count - 1


def test_same_name_gets_a_new_file_not_an_overwrite(logdir):
    paths = []
    for n in range(3):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with asynclog.start(logdir, name="same") as run:
                run.event("x")
        paths.append(run.path)
        assert [type(w.message) for w in seen] == ([asynclog.NameTakenWarning] if n else [])  # it says so
    assert len(set(paths)) == 3 and all(os.path.exists(p) for p in paths)


def test_unwritable_directory_fails_at_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises((OSError, asynclog.WriterError)):
        asynclog.start(path=blocker / "x.alog")
    existing_directory = tmp_path / "a_directory"
    existing_directory.mkdir()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        asynclog.start(path=existing_directory)
    with pytest.raises(IsADirectoryError):  # at the call site: start() writes the file's first bytes itself
        asynclog.start(path=existing_directory, overwrite=True)


def test_metadata_lands_in_the_header(logdir):
    with asynclog.start(logdir, name="meta", metadata={"checkpoint": "step_60", "lr": 1e-5}) as run:
        pass
    with asynclog.open(run.path) as log:
        assert log.header["metadata"] == {"checkpoint": "step_60", "lr": 1e-5}
        assert log.header["name"] == "meta" and log.header["config"]["level"] == "standard"
