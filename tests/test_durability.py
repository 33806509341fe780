"""What survives a power loss: the order of fsyncs, renames and directory creations, read from a real trace.

A file's contents are durable once it is fsynced; its name only once the directory holding it is fsynced, and
that directory's own name once its parent is. A workload of real runs (``asynclog.start`` with a durable
flush and a close, a rank's shard, a DetailedLogger run, an export) runs under ``strace -f``; each step that
promises durability marks its return with an ``access`` of a path under ``/asynclog-mark/``, and the tests read
what the package and its writer process did before each mark.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from typing import NamedTuple

import pytest

from faults.crashimages import complete_calls, strace_runs


pytestmark = pytest.mark.skipif(not strace_runs(), reason="strace is not installed (apt-get install strace) or may not "
                                "trace here: the order of fsyncs is read from its syscall trace")

MARK = "/asynclog-mark/"

WORKLOAD = """
import os, sys
import asynclog
from asynclog import DetailedLogger
from asynclog.tools.export import export

root = sys.argv[1]

def mark(step):
    os.access("{mark}" + step, os.F_OK)

run = asynclog.start(os.path.join(root, "plain", "deeper"), name="flushed")
run.event("step", i=1)
run.flush(durable=True)
mark("flushed")
run.close()
mark("flushed-closed")

run = asynclog.start(os.path.join(root, "closed"), name="closed")
run.event("step", i=1)
run.close()
mark("closed")

run = asynclog.start(os.path.join(root, "ranked"), name="job", rank=0, world_size=2)
run.event("step", i=1)
run.close()
mark("ranked")

out = os.path.join(root, "probe")
config = {{"detailed_logging": {{"enabled": True, "level": "standard", "output_directory": out}}}}
logger = DetailedLogger(config)
path = logger.log_run_start("/ckpts/step_60", config)
mark("detailed-started")
logger.finalize_log({{"bars_dot": 0.5}})
mark("finalized")
print(path)

export(path, "jsonl", out=os.path.join(root, "exported", "jsonl"))
mark("exported")
asynclog.shutdown()
""".format(mark=MARK)

_SYSCALLS = ("openat,open,creat,mkdir,mkdirat,rename,renameat,renameat2,link,linkat,fsync,fdatasync,"
             "access,faccessat,faccessat2")
_CALL = re.compile(r"(\w+)\((.*)\)\s+=\s+(-?\d+)")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_FD_PATH = re.compile(r"^\d+<(.*)>")


class Op(NamedTuple):
    """One completed system call: where it ended in the trace, what it was, the paths it named."""

    at: int
    name: str
    paths: tuple[str, ...]
    flags: str


def parse(text: str) -> list[Op]:
    ops = []
    for call in complete_calls(text):
        match = _CALL.match(call)
        if not match:
            continue
        name, args = match.group(1), match.group(2)
        if int(match.group(3)) < 0 and not name.endswith("access"):
            continue  # a failed call changed nothing (a mark's access fails: there is no such file)
        if name in ("fsync", "fdatasync"):
            fd = _FD_PATH.match(args)
            paths = (fd.group(1),) if fd else ()
        else:
            paths = tuple(s.encode().decode("unicode_escape") for s in _STRING.findall(args))
        ops.append(Op(len(ops), name, paths, args))
    return ops


class Trace:
    def __init__(self, ops: list[Op]):
        self.ops = ops

    def mark(self, step: str) -> int:
        found = [op.at for op in self.ops if op.name.endswith("access") and op.paths == (MARK + step,)]
        assert found, f"no mark {step!r} in the trace"
        return found[0]

    def marks_after(self, at: int) -> int:
        """The first mark after ``at``: the return of the call that did what happened there."""
        return next(op.at for op in self.ops[at:] if op.name.endswith("access") and op.paths[0].startswith(MARK))

    def created(self, path: str, before: int | None = None) -> int:
        """Where ``path`` was made (a directory made, a file opened with O_CREAT): the first time, or the last
        before ``before``."""
        made = [op.at for op in self.ops[:before] if op.paths and op.paths[0] == path
                and (op.name in ("mkdir", "mkdirat") or "O_CREAT" in op.flags)]
        assert made, f"{path} was not created in the trace"
        return made[0] if before is None else made[-1]

    def fsynced(self, path: str, after: int, before: int) -> bool:
        return any(op.name in ("fsync", "fdatasync") and op.paths == (path,) and after < op.at < before
                   for op in self.ops)

    def replacements(self, under: str) -> list[Op]:
        """Every rename (or link, for a file never to be overwritten) into a path under ``under``."""
        return [op for op in self.ops if op.name.startswith(("rename", "link")) and len(op.paths) == 2
                and op.paths[1].startswith(under)]


@pytest.fixture(scope="module")
def traced(tmp_path_factory) -> tuple[Trace, str, str]:
    """The workload run once under strace: the trace, the root it wrote in, and the DetailedLogger's log."""
    root = os.path.realpath(tmp_path_factory.mktemp("durable"))
    trace_file = os.path.join(root, "strace.txt")
    work = os.path.join(root, "work")
    os.mkdir(work)
    done = subprocess.run(["strace", "-f", "-y", "-qq", "-o", trace_file, "-e", f"trace={_SYSCALLS}",
                           sys.executable, "-c", textwrap.dedent(WORKLOAD), work],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(trace_file, encoding="utf-8", errors="replace") as f:
        return Trace(parse(f.read())), work, done.stdout.strip().splitlines()[-1]


def _assert_names_durable(trace: Trace, path: str, existed: str, before: int) -> None:
    """``path`` was created, and its folder and every folder created above it, up to ``existed``, were fsynced
    after the entry each holds was made and before ``before``."""
    child = path
    while child != existed:
        folder = os.path.dirname(child)
        made = trace.created(child)
        assert trace.fsynced(folder, made, before), f"{folder} not fsynced after {child} was made, before it returned"
        child = folder


def test_durable_flush_fsyncs_the_new_logs_directory_and_each_new_parent(traced):
    trace, work, _ = traced
    log = os.path.join(work, "plain", "deeper", "flushed.alog")
    _assert_names_durable(trace, log, work, trace.mark("flushed"))


def test_close_fsyncs_the_new_logs_directory_before_it_returns(traced):
    trace, work, _ = traced
    log = os.path.join(work, "closed", "closed.alog")
    _assert_names_durable(trace, log, work, trace.mark("closed"))


def test_a_ranks_close_fsyncs_its_run_folder_and_the_folders_made_for_it(traced):
    trace, work, _ = traced
    shard = os.path.join(work, "ranked", "job", "rank-00000.alog")
    _assert_names_durable(trace, shard, work, trace.mark("ranked"))


def test_detailed_logger_run_fsyncs_its_day_folder_and_output_directory_before_finalize_returns(traced):
    trace, work, path = traced
    assert os.path.dirname(os.path.dirname(path)) == os.path.join(work, "probe")
    _assert_names_durable(trace, path, work, trace.mark("finalized"))


def test_sidecars_are_fsynced_before_their_rename_and_their_folder_after(traced):
    trace, work, path = traced
    stem = path.removesuffix(".alog")
    replaced = trace.replacements(work)
    targets = {op.paths[1] for op in replaced}
    expected = {stem + "_summary.json", stem + "_config.yaml", os.path.join(work, "probe", "README.md"),
                os.path.join(work, "ranked", "job", "manifest.json")}
    assert expected <= targets, sorted(targets)
    assert any(t.startswith(os.path.join(work, "exported")) for t in targets), sorted(targets)
    for op in replaced:
        tmp, target = op.paths
        assert trace.fsynced(tmp, trace.created(tmp, op.at), op.at), f"{tmp} not fsynced before it became {target}"
        returned = trace.marks_after(op.at)
        assert trace.fsynced(os.path.dirname(target), op.at, returned), \
            f"{os.path.dirname(target)} not fsynced after {target} was put in place"


def test_an_exports_new_folders_are_fsynced_before_it_returns(traced):
    trace, work, _ = traced
    written = [op.paths[1] for op in trace.replacements(os.path.join(work, "exported"))]
    assert written
    for target in written:  # the file's own name: test_sidecars_are_fsynced_before_their_rename_and_their_folder_after
        _assert_names_durable(trace, os.path.dirname(target), work, trace.mark("exported"))
