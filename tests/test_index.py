"""The index of each folder of runs (`asynclog/index.py`) behind `ls`, `sweep` and `asynclog.scan`: the rows are
the same with and without it, follow every change to a run, and survive a broken, hostile or unwritable index and
sweeps running at once. Real runs, real files, real CLI processes."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time

import msgspec
import pytest

import asynclog
from asynclog import _format as fmt
from asynclog.tools.analysis import COLUMNS
from test_analysis import ROOT, damaged_copies, plain_runs, probe_run

INDEX = ".asynclog-index"
AGO = 60  # seconds: files older than the index's "modified a moment ago" window, so their rows are kept
KEPT = [c for c in COLUMNS if c != "path"]  # a row as the index keeps it: its path is where the run is


def scan(folder, **options) -> list[dict]:
    from asynclog.tools.analysis import scan

    return scan(folder, as_frame=False, **options)


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asynclog", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def sweep_json(folder, *options: str, env: dict | None = None) -> list[dict]:
    done = cli("sweep", str(folder), "--json", *options, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def rank_job(out) -> str:
    """A job of two ranks, both closed: one run folder with a manifest and two shards."""
    shards = [asynclog.start(out, name="job", rank=rank, world_size=2) for rank in range(2)]
    for rank, run in enumerate(shards):
        run.event("step", rank=rank)
        run.close()
    return os.path.join(out, "job")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Probe runs, plain runs, damaged and unfinished files and a rank folder, in four folders; never changed."""
    out = tmp_path_factory.mktemp("made")
    paths = {ckpt: probe_run(out / "probe", ckpt) for ckpt in ("step_2", "step_10")}
    paths["notes"], paths["dropping"] = plain_runs(out / "plain")
    paths.update(damaged_copies(paths["step_10"], out / "broken"))
    paths["job"] = rank_job(out / "ranks")
    return out, {k: os.path.relpath(v, out) for k, v in paths.items()}


@pytest.fixture
def runs(made, tmp_path):
    """A copy of the made runs, every file last modified a minute ago, and a function naming a run's path."""
    made_out, places = made
    out = tmp_path / "runs"
    shutil.copytree(made_out, out, symlinks=True)
    age(out)
    return out, lambda key: os.path.join(out, places[key])


def age(folder, seconds: float = AGO) -> None:
    then = time.time() - seconds
    for root, _, names in os.walk(folder):
        for name in names:
            os.utime(os.path.join(root, name), (then, then), follow_symlinks=False)


def indexes(folder) -> list[str]:
    return sorted(os.path.join(root, INDEX) for root, _, names in os.walk(folder) if INDEX in names)


def read_index(path: str) -> dict:
    with open(path, "rb") as f:
        return msgspec.msgpack.decode(f.read())


def write_index(path: str, index: dict) -> None:
    with open(path, "wb") as f:
        f.write(msgspec.msgpack.encode(index))


def same_size_different_bytes(path: str) -> None:
    """Rewrite the file in place with one footer byte flipped, its size and mtime as they were (as ``cp -p``
    over it, or ``rsync --inplace -t``, would leave them): only its ctime tells."""
    st = os.stat(path)
    with open(path, "rb") as f:
        data = bytearray(f.read())
        footer = fmt.read_trailer(f)
    data[footer + fmt.HEADER_SIZE + 3] ^= 0xFF
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# --- the rows are the rows --------------------------------------------------------------------------------------
def test_rows_are_the_same_with_and_without_the_index(runs):
    out, path = runs
    unindexed = scan(out, index=False)
    assert indexes(out) == []
    building, indexed = scan(out), scan(out)
    assert indexed == building == unindexed
    holding_runs = {os.path.dirname(path(key)) for key in ("step_2", "notes", "junk", "job")}
    assert indexes(out) == sorted(os.path.join(folder, INDEX) for folder in holding_runs)
    assert [r["path"] for r in indexed if r["path"].startswith(path("job"))] == [path("job")]  # one run
    assert {r["status"] for r in indexed} == {"complete", "incomplete", "damaged"}
    assert sweep_json(out) == sweep_json(out, "--no-index") == unindexed


def test_no_index_option_and_environment_neither_read_nor_write_it(runs):
    out, path = runs
    assert sweep_json(out, "--no-index") == sweep_json(out, env={"ASYNCLOG_NO_INDEX": "1"}) == scan(out, index=False)
    done = cli("ls", str(out), "--no-index")
    assert done.returncode == 0 and path("step_10") in done.stdout
    assert indexes(out) == []
    sweep_json(out)
    index_path = os.path.join(os.path.dirname(path("step_2")), INDEX)
    index = read_index(index_path)
    for entry in index["runs"].values():
        entry[1][KEPT.index("level")] = "from the index"
    write_index(index_path, index)
    assert "from the index" in json.dumps(sweep_json(out))  # the test sees the index when it is used ...
    assert "from the index" not in json.dumps(sweep_json(out, "--no-index"))  # ... and not when it is not
    assert "from the index" not in json.dumps(sweep_json(out, env={"ASYNCLOG_NO_INDEX": "1"}))


def test_an_unchanged_run_is_read_once_and_then_comes_from_the_index(runs, monkeypatch):
    import asynclog.tools.analysis as analysis

    out, path = runs
    read, real = [], analysis.read_run
    monkeypatch.setattr(analysis, "read_run", lambda p: read.append(p) or real(p))
    everything = scan(out)
    paths = {r["path"] for r in everything}
    assert {p for p in read if p in paths} == paths  # (a run folder's read reads its shards too)
    read.clear()
    assert scan(out) == everything and read == []
    os.utime(path("notes"))  # touched: read again, as is a run modified a moment ago, every time
    scan(out), scan(out)
    assert read == [path("notes"), path("notes")]


# --- every change shows -----------------------------------------------------------------------------------------
def cut_trailer(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "r+b") as f:
        f.truncate(len(data) - fmt.TRAILER_SIZE)
    return data[-fmt.TRAILER_SIZE:]


def append(path: str, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def unfinished_then_finished(path):
    """The run is seen without its trailer (still being written), then its last bytes arrive."""
    trailer = cut_trailer(path("step_10"))
    age(os.path.dirname(path("step_10")))
    return lambda: append(path("step_10"), trailer)


def summary_later(path):
    """The log is seen closed before the writer has written the summary beside it."""
    summary = path("step_2").removesuffix(".alog") + "_summary.json"
    os.rename(summary, summary + ".later")
    return lambda: os.rename(summary + ".later", summary)


def rank_unfinished_then_finished(path):
    shard = os.path.join(path("job"), "rank-00001.alog")
    trailer = cut_trailer(shard)
    age(path("job"))
    return lambda: append(shard, trailer)


CHANGES = {
    "appended to": lambda path: lambda: append(path("notes"), b"frames after the trailer"),
    "finished after being seen unfinished": unfinished_then_finished,
    "summary written after the log was seen": summary_later,
    "replaced by another run": lambda path: lambda: shutil.copy(path("dropping"), path("notes")),
    "rewritten in place, same size and mtime": lambda path: lambda: same_size_different_bytes(path("step_2")),
    "deleted": lambda path: lambda: os.unlink(path("step_10")),
    "added": lambda path: lambda: shutil.copy2(path("notes"), os.path.join(os.path.dirname(path("notes")), "new.alog")),
    "rank shard finished after being seen unfinished": rank_unfinished_then_finished,
    "rank shard deleted": lambda path: lambda: os.unlink(os.path.join(path("job"), "rank-00001.alog")),
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_changed_run_shows_as_it_is_now(runs, change):
    out, path = runs
    make_change = CHANGES[change](path)
    before = scan(out)
    assert indexes(out)
    make_change()
    now = scan(out)
    assert now == scan(out, index=False) == scan(out)
    assert now != before


def test_a_run_being_written_shows_as_it_is_now(runs):
    out, path = runs
    run = asynclog.start(os.path.join(out, "plain"), name="live")
    run.event("step", i=0)
    run.flush()
    seen = {r["path"]: r for r in scan(out)}[run.path]
    assert seen["status"] == "incomplete" and indexes(out)
    for i in range(1, 50):
        run.event("step", i=i)
    run.close()
    now = {r["path"]: r for r in scan(out)}[run.path]
    assert now["status"] == "complete" and now["size"] > seen["size"]
    assert scan(out) == scan(out, index=False)


# --- a cache, never a source of truth -----------------------------------------------------------------------------
def lying(index: dict) -> dict:
    """The index with every run's ESS replaced by 1234.5 (in place)."""
    for entry in index["runs"].values():
        entry[1][KEPT.index("ESS")] = 1234.5
    return index


def break_index(how: str, index_path: str, tmp_path) -> None:
    good = read_index(index_path)
    os.unlink(index_path)
    if how == "garbage":
        with open(index_path, "wb") as f:
            f.write(os.urandom(4096))
    elif how == "truncated":
        data = msgspec.msgpack.encode(good)
        with open(index_path, "wb") as f:
            f.write(data[: len(data) // 2])
    elif how == "wrong types":
        index = lying(good)
        next(iter(index["runs"].values()))[1][KEPT.index("ESS")] = "1234.5"  # text in a number column
        write_index(index_path, index)
    elif how == "stamps of the wrong shape":
        for entry in lying(good)["runs"].values():
            entry[0] = [["a", "b"]]
        write_index(index_path, good)
    elif how in ("another version", "another schema"):
        good["kind" if how == "another version" else "schema"] += "-other"
        write_index(index_path, lying(good))
    elif how == "huge":
        with open(index_path, "wb") as f:
            f.write(msgspec.msgpack.encode(lying(good)))
            f.truncate(1 << 30)  # sparse: a gibibyte of index that costs no disk
    elif how == "symlink":
        write_index(tmp_path / "elsewhere", lying(good))
        os.symlink(tmp_path / "elsewhere", index_path)
    elif how == "fifo":
        os.mkfifo(index_path)
    elif how == "ghost run":
        stamp_and_row = next(iter(good["runs"].values()))
        good["runs"]["ghost.alog"] = stamp_and_row
        write_index(index_path, good)


BROKEN = ["garbage", "truncated", "wrong types", "stamps of the wrong shape", "another version", "another schema",
          "huge", "symlink", "fifo", "ghost run"]


@pytest.mark.parametrize("how", BROKEN)
def test_a_broken_or_hostile_index_is_ignored_and_rebuilt(runs, tmp_path, how):
    out, path = runs
    truth = scan(out, index=False)
    assert scan(out) == truth
    index_path = os.path.join(os.path.dirname(path("step_2")), INDEX)
    break_index(how, index_path, tmp_path)
    assert scan(out) == truth
    assert stat.S_ISREG(os.lstat(index_path).st_mode)  # rebuilt as a plain file, in place of whatever was there
    assert len(read_index(index_path)["runs"]) == 2 and scan(out) == truth
    if how == "symlink":  # the link was replaced, what it pointed at left alone
        elsewhere = read_index(tmp_path / "elsewhere")["runs"].values()
        assert all(entry[1][KEPT.index("ESS")] == 1234.5 for entry in elsewhere)


def test_an_index_that_cannot_be_written_leaves_the_rows_right(runs):
    out, path = runs
    truth, folder = scan(out, index=False), os.path.dirname(path("step_2"))
    os.mkdir(os.path.join(folder, INDEX))  # in the way of the index: it can be neither read nor replaced
    assert scan(out) == truth and sweep_json(out) == truth
    assert os.path.isdir(os.path.join(folder, INDEX)) and os.path.isfile(os.path.join(out, "plain", INDEX))
    assert [name for name in os.listdir(folder) if name.endswith(".tmp")] == []


def test_a_run_the_index_cannot_hold_is_read_every_time_and_the_others_are_kept(runs):
    out, path = runs
    folder = os.path.dirname(path("notes"))
    shutil.copy2(path("notes"), os.path.join(os.fsencode(folder), b"not-utf8-\xff.alog"))  # a name msgpack refuses
    with open(path("dropping").removesuffix(".alog") + "_summary.json", "w") as f:
        f.write('{"timing": {"total_time": %d}}' % 2**70)  # a number msgpack cannot hold
    age(folder)
    truth = scan(out, index=False)
    assert 2**70 in [r["total_time"] for r in truth]
    assert scan(out) == truth == scan(out)
    assert sorted(read_index(os.path.join(folder, INDEX))["runs"]) == ["notes.alog"]


def make_read_only(folder) -> None:
    """chmod a-w; where that does not stop this process (root), the immutable attribute; else skip."""
    os.chmod(folder, 0o555)
    if os.access(folder, os.W_OK) and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        os.chmod(folder, 0o755)
        pytest.skip("cannot make a folder read-only for this user here")
    try:
        open(os.path.join(folder, "probe.tmp"), "x").close()
    except OSError:
        return
    os.unlink(os.path.join(folder, "probe.tmp"))
    pytest.skip("the folder stays writable for this user")


def make_writable(folder) -> None:
    subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    os.chmod(folder, 0o755)


def test_a_read_only_folder_is_swept_without_saving_its_index(runs):
    out, path = runs
    folder = os.path.dirname(path("step_2"))
    sweep_json(out)
    with open(os.path.join(folder, INDEX), "rb") as f:
        saved = f.read()
    names = sorted(os.listdir(folder))
    make_read_only(folder)
    try:
        append(path("step_2"), b"written after the folder was made read-only")
        truth = scan(out, index=False)
        assert sweep_json(out) == truth and scan(out) == truth
        with open(os.path.join(folder, INDEX), "rb") as f:
            assert f.read() == saved
        assert sorted(os.listdir(folder)) == names
    finally:
        make_writable(folder)


def test_sweeps_at_once_and_a_job_adding_runs_never_leave_a_half_index(runs, full):
    out, path = runs
    folder, seen, sweeps = os.path.dirname(path("step_2")), 0, []
    index_path = os.path.join(folder, INDEX)
    for added in range(40 if full else 8):
        shutil.copy2(path("step_2"), os.path.join(folder, f"added_{added}.alog"))  # as a running job would
        sweeps = [s for s in sweeps if s.poll() is None]
        while len(sweeps) < 3:
            sweeps.append(subprocess.Popen([sys.executable, "-m", "asynclog", "sweep", str(out)], cwd=ROOT,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        for _ in range(20):
            try:
                with open(index_path, "rb") as f:
                    msgspec.msgpack.decode(f.read())  # a half-written file fails here
                seen += 1
            except FileNotFoundError:
                pass
            time.sleep(0.005)
    for s in sweeps:
        assert s.wait(timeout=120) == 0, s.stderr.read()
    assert seen > 0
    assert scan(out) == scan(out, index=False)
    assert [name for name in os.listdir(folder) if name.endswith(".tmp")] == []
