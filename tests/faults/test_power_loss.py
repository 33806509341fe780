"""Power loss, simulated as SQLite's crash tests do: every file operation of a real workload is journalled, and
images of what a power cut at any point could leave on disk are read back.

The workload (``crash_workload.py``: plain runs with a durable flush and a close, DetailedLogger runs with their
sidecars, the two ranks of a job, a dataset export and an ``ls`` that writes its index) runs once under strace;
``crashimages`` turns the trace into a journal and builds the images (what each model allows is said there).
For each image:

- every log opens (``asynclog.open``) without an error other than a clear AsyncLogError for a log whose header
  never reached the disk, and without a hang; ``verify``, ``ls`` and ``show`` answer with a status, never a
  traceback;
- everything a durable flush, a close or an atomic replace confirmed before the cut is there, bit-exact;
- nothing is called complete (``Log.complete``, ``verify`` exit 0, ``ls`` and ``show`` status) that is not the
  whole log; a log cut short reads as incomplete (``verify`` 2), not damaged;
- what a log gives back (events, tensors, stream rows) is what was logged, in order; anything skipped is reported (a warning, or ``verify``
  exit 1), never passed as data;
- a file put in place by rename is whole: the version renamed, never empty, zero-filled or partial.

Seeded: a failure prints the seed and the trace (``ASYNCLOG_CRASH_SEED=N ASYNCLOG_CRASH_TRACE=PATH`` replay the
same images; the trace stays in pytest's temporary folder). 25 images a model in CI, 500 a model with ``--full``.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
import sys
import warnings
from dataclasses import dataclass, field

import pytest

import asynclog
from asynclog.cli import main as cli
from asynclog.errors import AsyncLogError
from asynclog._reader import check

from faults import crashimages as ci

HERE = os.path.dirname(os.path.abspath(__file__))
LOG = ".alog"
HANG_S = 30
CHECKED: collections.Counter = collections.Counter()  # what the images put to the test, for the counts printed


pytestmark = pytest.mark.skipif(not ci.strace_runs(), reason="strace is not installed (apt-get install strace) or may "
                                "not trace here: the journal of file operations is read from its syscall trace")


@dataclass
class Workload:
    """The journal of one run of the workload, and what it promised where."""

    root: str
    trace: str
    journal: list
    promises: list  # [(where in the journal the promise returned, path relative to the root, kind)]
    final: ci.Disk = field(init=False)
    versions: dict[int, list[tuple[int, bytes]]] = field(init=False)  # inode renamed or linked into place:
    # (where in the journal, its bytes then), for each time it was
    placed: list[tuple[int, int]] = field(init=False)  # (where in the journal, inode) of each rename or link
    first_write: dict[int, int] = field(init=False)  # a log's inode: the length of its first write (the header)
    _logged: dict = field(default_factory=dict)

    def __post_init__(self):
        self.final = ci.replay(self.journal, len(self.journal))
        self.versions, self.placed, self.first_write = {}, [], {}
        disk, named = ci.replay(self.journal, 0), set()
        for i, op in enumerate(self.journal):
            ci.apply(disk, op)
            if isinstance(op, ci.Write):
                self.first_write.setdefault(op.inode, len(op.data))
            if not isinstance(op, ci.Names):
                continue
            for _, _, inode in op.changes:
                if inode in named and inode in disk.data:  # a rename or a link: a version put in place
                    self.versions.setdefault(inode, []).append((i, bytes(disk.data[inode])))
                    self.placed.append((i, inode))
                named.add(inode)

    def version_before(self, inode: int, upto: int) -> bytes | None:
        """The bytes ``inode`` had when it was last renamed or linked into place among the journal's first ``upto``
        operations; None when it was not (a file written under its own name and renamed later, like a dataset's
        staged part, may be cut anywhere before that rename)."""
        placed = [data for i, data in self.versions.get(inode, ()) if i < upto]
        return placed[-1] if placed else None

    def at(self, upto: int) -> ci.Disk:
        return ci.replay(self.journal, upto)

    def placed_after(self, returned: int) -> set[int]:
        """The files renamed or linked into place after the journal's first ``returned`` operations."""
        return {inode for i, inode in self.placed if i >= returned}

    def logged(self, inode: int) -> tuple[list, list, list]:
        """The events, tensors and stream rows of the log's whole file, read once."""
        if inode not in self._logged:
            whole = os.path.join(os.path.dirname(self.root), f"whole-{inode}{LOG}")
            with open(whole, "wb") as f:
                f.write(self.final.data[inode])
            with asynclog.open(whole) as log:
                self._logged[inode] = _contents(log)
        return self._logged[inode]


def _contents(log) -> tuple[list, list, list]:
    """A log's events (tensors left out), its tensors and its streams' rows, tensors as (dtype, shape, bytes)."""
    events = [{k: v for k, v in e.items() if not hasattr(v, "dtype")} for e in log.events()]
    tensors = [(name, _bytes(t)) for name, t in log.tensors()]
    rows = [(name, {k: _bytes(v) if hasattr(v, "dtype") else v for k, v in row.items()})
            for name in log.stream_names() for chunk in log.stream(name) for row in chunk.iter_rows()]
    return events, tensors, rows


def _bytes(tensor) -> tuple:
    return str(tensor.dtype), tuple(tensor.shape), tensor.numpy().tobytes()


@pytest.fixture(scope="module")
def workload(tmp_path_factory) -> Workload:
    """The workload run once under strace, or the trace ``ASYNCLOG_CRASH_TRACE`` names (one a failure printed)."""
    trace = os.environ.get("ASYNCLOG_CRASH_TRACE")
    if not trace:
        base = tmp_path_factory.mktemp("powerloss")
        root, trace = os.path.realpath(os.path.join(base, "root")), os.path.join(base, "trace.txt")
        os.mkdir(root)
        done = ci.record([sys.executable, os.path.join(HERE, "crash_workload.py"), root], trace)
        assert done.returncode == 0, done.stderr[-3000:]
        with open(trace + ".json", "w") as f:
            json.dump({"root": root, "promises": json.loads(done.stdout.splitlines()[-1])}, f)
    with open(trace + ".json") as f:
        told = json.load(f)
    with open(trace, encoding="latin-1") as f:
        journal = ci.parse(f.read(), told["root"])
    where = ci.marks(journal)
    promises = [(where[number], os.path.relpath(path, told["root"]), kind)
                for number, promised in told["promises"] for path, kind in promised]
    return Workload(told["root"], trace, journal, promises)


def test_the_journal_replays_to_the_files_the_workload_left(workload):
    if os.environ.get("ASYNCLOG_CRASH_TRACE"):
        pytest.skip("a trace replayed: its files are not here")
    on_disk = {}
    for folder, dirs, files in os.walk(workload.root):
        relative = os.path.relpath(folder, workload.root)
        on_disk.update((os.path.normpath(os.path.join(relative, d)) + "/", None) for d in dirs)
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                on_disk[os.path.normpath(os.path.join(relative, name))] = f.read()
    replayed = {path: None if path.endswith("/") else bytes(workload.final.data[inode])
                for path, inode in workload.final.paths().items()}
    assert replayed.keys() == on_disk.keys()
    assert replayed == on_disk
    assert {kind for _, _, kind in workload.promises} == {"flushed", "closed", "replaced"}


def test_a_logs_footer_is_written_only_once_the_frames_before_it_are_durable(workload):
    """A footer on disk over frames that are not would have ``ls`` and ``Log.complete`` call a torn log complete:
    a power cut may keep any sector written since the last fsync and lose the others."""
    logs = [(path, inode) for path, inode in workload.final.paths().items() if path.endswith(LOG)]
    assert len(logs) == 6
    for path, inode in logs:
        writes = [i for i, op in enumerate(workload.journal) if isinstance(op, ci.Write) and op.inode == inode]
        frames, footer = writes[-2], writes[-1]
        assert any(isinstance(op, ci.Sync) and op.inode == inode for op in workload.journal[frames:footer]), \
            f"{path}: no fsync between its last frame and its footer"


@pytest.mark.parametrize("held", [b"", b"ASYN", b"ASYNCLOG\x02"])
def test_a_log_whose_first_bytes_never_reached_the_disk_is_incomplete_not_damaged(tmp_path, held):
    """What a power cut leaves of a run started but never flushed: its file, empty or cut inside the preamble."""
    (tmp_path / "cut.alog").write_bytes(held)
    (tmp_path / "junk.alog").write_bytes(b"ASYNX")  # not the start of an asynclog preamble: damaged
    status, _, err = _command(["verify", str(tmp_path / "cut.alog")])
    assert status == 2, err
    assert _command(["verify", str(tmp_path / "junk.alog")])[0] == 1
    status, out, err = _command(["ls", "--json", str(tmp_path)])
    rows = {os.path.basename(row["path"]): row for row in json.loads(out)}
    assert (rows["cut.alog"]["status"], rows["junk.alog"]["status"]) == ("incomplete", "damaged"), rows


@pytest.mark.parametrize("model", ci.MODELS)
def test_a_power_cut_anywhere_keeps_every_promise_and_passes_no_damage_as_data(workload, model, full, tmp_path):
    seed = int(os.environ.get("ASYNCLOG_CRASH_SEED") or random.randrange(1 << 32))
    rng = random.Random(seed)
    findings: list[str] = []
    CHECKED.clear()
    images = 500 if full else 25
    for _ in range(images):
        crash = ci.random_crash(workload.journal, model, rng)
        image = str(tmp_path / "image")
        shutil.rmtree(image, ignore_errors=True)
        disk = ci.crash_image(workload.journal, crash)
        ci.materialize(disk, image)
        findings += [f"{crash}: {finding}" for finding in _check_image(workload, crash, disk, image)]
    print(f"power loss, {model}: {images} images, {len(findings)} findings, seed {seed}; checked: "
          + ", ".join(f"{n} {what}" for what, n in sorted(CHECKED.items())))
    for kind, n in collections.Counter(_kind(f) for f in findings).most_common():
        print(f"  {n:5d}  {kind}")
    assert not findings, (f"{len(findings)} findings; ASYNCLOG_CRASH_SEED={seed} ASYNCLOG_CRASH_TRACE={workload.trace} "
                          "replay them:\n" + "\n".join(findings[:20]))


# --- one image ---------------------------------------------------------------------------------------------
class _Hung(Exception):
    pass


@contextlib.contextmanager
def _bounded(seconds: int):
    def hung(signum, frame):
        raise _Hung(f"no answer in {seconds} s")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _check_image(workload: Workload, crash: ci.Crash, disk: ci.Disk, image: str) -> list[str]:
    paths = disk.paths()
    try:
        with _bounded(HANG_S):
            return (_promises_kept(workload, crash, disk, paths) + _renamed_files_whole(workload, crash, disk, paths)
                    + [f for path, inode in paths.items() if path.endswith(LOG)
                       for f in _log_read_honestly(workload, disk, image, path, inode)]
                    + _run_folders_open(workload, disk, image, paths) + _commands_answer(workload, disk, image, paths))
    except _Hung as exc:
        return [f"hang: {exc}"]


def _promises_kept(workload: Workload, crash: ci.Crash, disk: ci.Disk, paths: dict[str, int]) -> list[str]:
    findings = []
    for returned, path, kind in workload.promises:
        if returned > crash.at:
            continue
        CHECKED[f"promises ({kind})"] += 1
        if path not in paths:
            findings.append(f"{path}: gone, though {kind} before the cut")
            continue
        then = workload.at(returned)
        promised, held = bytes(then.data[then.paths()[path]]), bytes(disk.data[paths[path]])
        ok = {"flushed": held.startswith(promised), "closed": held == promised,
              "replaced": held == promised or paths[path] in workload.placed_after(returned)}[kind]
        if not ok:
            findings.append(f"{path}: {kind} before the cut, holds {len(held)} bytes that are not what was confirmed")
    return findings


def _renamed_files_whole(workload: Workload, crash, disk: ci.Disk, paths: dict[str, int]) -> list[str]:
    versions = {path: workload.version_before(inode, crash.at) for path, inode in paths.items()}
    versions = {path: data for path, data in versions.items() if data is not None and not path.endswith(".tmp")}
    CHECKED["files renamed into place"] += len(versions)
    return [f"{path}: put in place by rename, holds {len(disk.data[paths[path]])} bytes, not the {len(data)} renamed"
            for path, data in versions.items() if bytes(disk.data[paths[path]]) != data]


def _log_read_honestly(workload: Workload, disk: ci.Disk, image: str, path: str, inode: int) -> list[str]:
    held, whole = bytes(disk.data[inode]), bytes(workload.final.data[inode])
    where = os.path.join(image, path)
    CHECKED["logs read" if held == whole else "logs read, not whole"] += 1
    frames, damaged, incomplete = check(where)
    status = 1 if damaged else 2 if incomplete else 0
    findings = []
    if status == 0 and held != whole:
        findings.append(f"{path}: verify says OK, but the log is not whole")
    if held != whole and whole.startswith(held) and status != 2:
        findings.append(f"{path}: cut short at {len(held)} of {len(whole)} bytes, verify says {status}, not 2")
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            with asynclog.open(where) as log:
                complete, read = log.complete, _contents(log)
    except AsyncLogError as exc:
        if held[:workload.first_write[inode]] == whole[:workload.first_write[inode]]:
            findings.append(f"{path}: its header is intact, yet open failed: {exc}")
        return findings
    except Exception as exc:  # noqa: BLE001 - any other error is the finding
        return findings + [f"{path}: open or read raised {type(exc).__name__}: {exc}"]
    if complete and held != whole:
        findings.append(f"{path}: Log.complete, but the log is not whole")
    for what, got, logged in zip(("events", "tensors", "stream rows"), read, workload.logged(inode)):
        if not _in_order_within(got, logged):
            findings.append(f"{path}: read {len(got)} {what} that are not what was logged, in order")
        elif got != logged[:len(got)] and not warned and status != 1:
            findings.append(f"{path}: {what} were skipped with no warning and verify says {status}")
    return findings


def _commands_answer(workload: Workload, disk: ci.Disk, image: str, paths: dict[str, int]) -> list[str]:
    findings = []
    folders = [p for p in paths if p.endswith("/") and p.count("/") == 1]
    runs = [p for p in paths if p.endswith(LOG)] + _run_folders(paths)
    for argv in [["ls", "--json", os.path.join(image, f)] for f in folders] + \
            [["show", "--json", os.path.join(image, p)] for p in runs]:
        status, out, err = _command(argv)
        CHECKED[f"{argv[0]} commands"] += 1
        if not isinstance(status, int) or "Traceback" in err:
            findings.append(f"{' '.join(argv[:-1])} {os.path.relpath(argv[-1], image)}: {status} {err[-300:]}")
        elif status == 0:
            rows = json.loads(out)
            findings += _complete_only_whole_logs(argv[0], workload, disk, image, paths,
                                                  rows if isinstance(rows, list) else [rows])
    return findings


def _run_folders(paths: dict[str, int]) -> list[str]:
    """The folders of a job's ranks (a manifest or a shard in them), each read as one run."""
    return sorted({os.path.dirname(p) for p in paths if os.path.basename(p) == "manifest.json"
                   or (os.path.basename(p).startswith("rank-") and p.endswith(LOG))})


def _run_folders_open(workload: Workload, disk: ci.Disk, image: str, paths: dict[str, int]) -> list[str]:
    findings = []
    for folder in _run_folders(paths):
        CHECKED["run folders opened"] += 1
        try:
            with asynclog.open(os.path.join(image, folder)) as log:
                list(log.events())
                if log.complete and any(disk.data[paths[p]] != workload.final.data[paths[p]]
                                        for p in paths if p.startswith(folder + "/") and p.endswith(LOG)):
                    findings.append(f"{folder}: complete, but a shard is not whole")
        except AsyncLogError:
            pass  # a clear error: a manifest or shard the cut took
        except Exception as exc:  # noqa: BLE001 - any other error is the finding
            findings.append(f"{folder}: open or read raised {type(exc).__name__}: {exc}")
    return findings


def _command(argv: list[str]):
    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()  # ls writes bytes to out.buffer
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli(argv)
        except SystemExit as exc:
            status = exc.code
        except Exception as exc:  # noqa: BLE001 - an error escaping the console script is the finding
            status = f"raised {type(exc).__name__}: {exc}"
    out.flush()
    return status, out.buffer.getvalue().decode("utf-8"), err.getvalue()


def _complete_only_whole_logs(command, workload, disk, image, paths, rows) -> list[str]:
    findings = []
    for row in rows:
        if row.get("status") != "complete":
            continue
        run = os.path.relpath(row["path"], image)
        logs = [p for p in paths if p.endswith(LOG) and (p == run or p.startswith(run + "/"))]
        torn = [p for p in logs if bytes(disk.data[paths[p]]) != bytes(workload.final.data[paths[p]])]
        if torn or not logs:
            findings.append(f"{command} calls {run} complete, but {torn or 'no log'} is not whole")
    return findings


def _kind(finding: str) -> str:
    """A finding without its crash, path and numbers: to count findings of one kind."""
    return re.sub(r"\d+", "N", finding.split(": ", 2)[-1])[:100]


def _in_order_within(read: list, logged: list) -> bool:
    """``read`` is ``logged`` with some left out, the rest in order."""
    rest = iter(logged)
    return all(any(event == candidate for candidate in rest) for event in read)


