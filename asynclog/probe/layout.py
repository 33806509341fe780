"""Where a probe's logs go: run folders and names, the summary and config sidecars, the README, retention.

The layout the logging plan draws, with asynclog's framed file as the main log::

    <output_directory>/
    ├── README.md                                   what the files are (written once, never overwritten)
    └── <YYYY-MM-DD>/
        ├── entropy_probe_<HH-MM-SS>_<checkpoint>.alog           main log (asynclog format)
        ├── entropy_probe_<HH-MM-SS>_<checkpoint>_summary.json   summary (at finalize; by the writer on a crash)
        ├── entropy_probe_<HH-MM-SS>_<checkpoint>_config.yaml    the exact config of the run
        └── entropy_probe_<name>_<checkpoint>/                   a run of a job of several ranks, as one folder
            ├── manifest.json                                    rank 0: the shards to expect (ranks.py)
            ├── rank-NNNNN.alog, rank-NNNNN_summary.json         each rank's log and summary
            └── config.yaml                                      rank 0: the exact config of the run

A job's ranks find their run folder without a collective: ``<name>``, the name every rank shares, stands in
for ``{timestamp}`` (``rank_run_paths``). Retention counts and removes a run folder as one run.
Every name built here is one path component inside the day folder: checkpoint names are sanitised and the
result is checked, so no checkpoint path (``../../etc``, ``a/b``, control or bidi characters) can place a
file elsewhere. Retention removes only runs this layout wrote, known by the marker in their header frame,
with their two sidecars; it follows no link and never leaves the output directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
import re
import stat
import time
import unicodedata
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import BinaryIO, NamedTuple, TypeVar

from asynclog import _ondisk as ondisk
from asynclog._files import atomic_write, create_exclusive, makedirs, mkdir
from asynclog._ondisk import (CONFIG_SUFFIX, MANIFEST, RANK_CONFIG, SHARD_STEM, SUFFIX, SUMMARY_SUFFIX, shard_name,
                              shard_stem)
from asynclog.config import CHECKPOINT_RULES, check_template, checkpoint_pattern
from asynclog.errors import CorruptLogError

__all__ = [
    "RunPaths",
    "checkpoint_name",
    "sanitize_name",
    "run_paths",
    "rank_run_paths",
    "new_rank_run_folder",
    "rank_run_paths_in",
    "ensure_readme",
    "marker",
    "prune",
    "closing",
    "SUFFIX",
]

_T = TypeVar("_T")  # what _read_log reads from a log
LAYOUT_ID = "asynclog.probe/1"  # the marker's id: bump it if the layout's files change
_RANK_FILE = re.compile(rf"({SHARD_STEM}({re.escape(SUFFIX)}|{re.escape(SUMMARY_SUFFIX)})|{re.escape(MANIFEST)}|{re.escape(RANK_CONFIG)})\Z")
_SHARD = re.compile(rf"{SHARD_STEM}{re.escape(SUFFIX)}\Z")
# What the plan's templates end with, mapped away: the main log is always an .alog file.
_FOREIGN_SUFFIXES = (".json.gz", ".json", ".gz", ".jsonl", SUFFIX)
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_MAX_NAME = 80
_FALLBACK = "checkpoint"


class RunPaths(NamedTuple):
    """The files of one run; all absolute, all inside ``day_dir``."""

    root: str
    day_dir: str
    main: str
    summary: str
    config: str


# --- names -------------------------------------------------------------------------------------------------
def sanitize_name(name: str, fallback: str = _FALLBACK) -> str:
    """One safe file-name component: letters, digits, ``.``, ``_``, ``-``; never empty, never starting with ``.``.

    NFKC first, so look-alikes of ``/`` (fullwidth solidus, ...) turn into ``/`` and are then replaced like
    it. Control characters, bidi marks, NUL and separators become ``_``; runs of ``_`` collapse.
    """
    text = unicodedata.normalize("NFKC", str(name))
    kept = "".join(ch if (ch.isalnum() or ch in "._-") and ch.isprintable() else "_" for ch in text)
    kept = re.sub(r"_+", "_", kept).strip("._-")[:_MAX_NAME].strip("._-")
    return kept or fallback


# Path components that say nothing about which checkpoint a path is: what trainers and people call the folder
# or file holding a checkpoint's weights, and the folders around it. ``auto`` skips them, compared lowercased,
# with ``-`` read as ``_`` and a weights file's extension dropped (``adapter_model.safetensors`` is
# ``adapter_model``). A sweep's ``step_60/model`` and ``step_120/model`` are then ``step_60`` and ``step_120``.
GENERIC_COMPONENTS = frozenset({
    "model", "models", "adapter", "adapters", "lora", "lora_adapter", "peft", "weights", "hf", "huggingface",
    "hf_model", "merged", "actor", "policy", "checkpoint", "checkpoints", "ckpt", "ckpts", "output", "outputs",
    "final", "latest", "last", "best", "saved_model", "pytorch_model", "adapter_model", "state_dict",
})
_WEIGHTS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".gguf", ".h5", ".msgpack")


def checkpoint_name(checkpoint_path: str | os.PathLike | None, rule: str = "auto") -> str:
    """The run's name from its checkpoint path, sanitised (``sanitize_name``): the one rule for file names and
    for the labels ``ls``, ``sweep``, ``show`` and ``plot`` give a run.

    The path is read with ``\\`` as ``/`` and normalised (``a/./b/..`` is ``a``). ``rule`` (the
    ``checkpoint_name`` setting):

    - ``auto``: the component nearest the end that is not in ``GENERIC_COMPONENTS`` (nor ``.`` or ``..``):
      ``/ckpt/step_60/model`` -> ``step_60``, ``/out/checkpoint-500/adapter_model.safetensors`` ->
      ``checkpoint-500``; the last component when every one is generic;
    - ``last``: the last component (``/ckpt/step_60/model`` -> ``model``);
    - else a regular expression, searched in the path: its first group (or its whole match, without groups)
      of the last match that names something; ``auto`` when none does.
    """
    if checkpoint_path is None:
        return _FALLBACK
    path = posixpath.normpath(os.fspath(checkpoint_path).replace("\\", "/"))
    parts = [part for part in path.split("/") if part]
    if rule not in CHECKPOINT_RULES:
        found = [m.group(1 if m.re.groups else 0) for m in checkpoint_pattern(rule).finditer(path)]
        if any(found):
            return sanitize_name([name for name in found if name][-1])
    if rule == "last" or not parts:
        return sanitize_name(parts[-1] if parts else "")
    informative = (part for part in reversed(parts) if not _generic(part))
    return sanitize_name(next(informative, parts[-1]))


def _generic(component: str) -> bool:
    name = component.lower().replace("-", "_")
    for suffix in _WEIGHTS_SUFFIXES:
        name = name.removesuffix(suffix)
    return name in GENERIC_COMPONENTS or name in (".", "..")


def _stem(template: str, values: dict) -> str:
    name = template.format(**values)
    lowered = name.lower()
    for suffix in _FOREIGN_SUFFIXES:
        if lowered.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return sanitize_name(name, fallback="run")


def run_paths(output_directory: str | os.PathLike, template: str, checkpoint_path, level: str,
              now: datetime | None = None, name: str | None = None, checkpoint_rule: str = "auto") -> RunPaths:
    """Build a new run's paths, creating its day folder and reserving its main log (an empty file, created
    exclusively: race-free between processes sharing the folder); a name already taken gets ``-1``, ``-2``, ...

    ``now`` is local time; the day folder is its date and ``{timestamp}`` its ``HH-MM-SS``, or ``name``
    when given. ``{checkpoint_name}`` is ``checkpoint_name(checkpoint_path, checkpoint_rule)``.
    """
    check_template(template)
    now = now or datetime.now()
    root = os.path.abspath(os.fspath(output_directory))
    day_dir = _day_folder(root, now)
    stem = _stem(template, _values(now, checkpoint_path, level, name, checkpoint_rule))
    for n in range(10_000):
        candidate = stem if n == 0 else f"{stem}-{n}"
        paths = RunPaths(root, day_dir, *(os.path.join(day_dir, candidate + s)
                                          for s in (SUFFIX, SUMMARY_SUFFIX, CONFIG_SUFFIX)))
        if any(os.path.lexists(p) for p in paths[3:]):
            continue
        try:
            create_exclusive(paths.main)
            break
        except FileExistsError:
            continue  # taken, by this process or another
    else:
        raise FileExistsError(f"no free name for {stem!r} in {day_dir}")
    for path in paths[2:]:
        # Belt and braces: sanitising already makes this impossible.
        if os.path.dirname(path) != day_dir:
            raise AssertionError(f"{path!r} escapes {day_dir!r}")
    return paths


def _values(now: datetime, checkpoint_path, level: str, timestamp: str | None = None, rule: str = "auto") -> dict:
    return {"timestamp": timestamp or now.strftime("%H-%M-%S"), "date": now.strftime("%Y-%m-%d"),
            "checkpoint_name": checkpoint_name(checkpoint_path, rule), "level": level}


def _day_folder(root: str, now: datetime) -> str:
    day_dir = os.path.join(root, now.strftime("%Y-%m-%d"))
    makedirs(day_dir)
    if os.path.islink(day_dir):  # a link would place the run outside the output directory
        raise FileExistsError(f"{day_dir} is a symlink; asynclog writes day folders only as real directories")
    return day_dir


# --- run folders of a job of several ranks ------------------------------------------------------------------
def rank_run_paths(output_directory: str | os.PathLike, template: str, checkpoint_path, level: str, name: str,
                   rank: int, occurrence: int = 0, now: datetime | None = None,
                   checkpoint_rule: str = "auto") -> RunPaths:
    """This rank's paths in the run folder every rank of the job finds on its own, with no collective.

    ``name`` (shared by every rank) takes the place of ``{timestamp}``; ``occurrence`` n > 0 (the same
    logger's n-th run of this name and checkpoint) adds ``-n``. The day (and ``{date}``) is this rank's,
    unless there is no such folder today but one under the day before or after still waits for this rank's
    shard: ranks that start on both sides of midnight meet, and a name used again another day starts a run
    of that day. ``main`` is the run folder, which ``asynclog.open`` reads as one run.
    """
    check_template(template)
    now = now or datetime.now()
    root = os.path.abspath(os.fspath(output_directory))
    suffix = f"-{occurrence}" if occurrence else ""

    def folder_on(when: datetime) -> str:
        stem = _stem(template, _values(when, checkpoint_path, level, name, checkpoint_rule)) + suffix
        return os.path.join(root, when.strftime("%Y-%m-%d"), stem)

    if not os.path.isdir(folder_on(now)):
        for when in (now - timedelta(days=1), now + timedelta(days=1)):
            folder = folder_on(when)
            if os.path.isdir(folder) and not os.path.lexists(os.path.join(folder, shard_name(rank))):
                _day_folder(root, when)  # refuses a symlinked day folder, as for today's
                return rank_run_paths_in(root, folder, rank)
    _day_folder(root, now)
    return rank_run_paths_in(root, folder_on(now), rank)


def new_rank_run_folder(output_directory: str | os.PathLike, template: str, checkpoint_path, level: str,
                        now: datetime | None = None, checkpoint_rule: str = "auto") -> str:
    """Rank 0's new run folder named as a single process's run is (its own time), created exclusively
    (``-1``, ``-2``, ... when taken); the other ranks are told it (``ranks.broadcast_from_rank0``)."""
    check_template(template)
    now = now or datetime.now()
    day_dir = _day_folder(os.path.abspath(os.fspath(output_directory)), now)
    stem = _stem(template, _values(now, checkpoint_path, level, rule=checkpoint_rule))
    for n in range(10_000):
        folder = os.path.join(day_dir, stem if n == 0 else f"{stem}-{n}")
        if os.path.lexists(folder + SUFFIX):
            continue
        try:
            mkdir(folder)
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"no free name for {stem!r} in {day_dir}")


def rank_run_paths_in(output_directory: str | os.PathLike, folder: str, rank: int) -> RunPaths:
    """This rank's paths in the run folder ``folder`` (created here when missing; never through a link).

    ``folder`` may come from rank 0 by broadcast: one that is not a day folder's child of the output
    directory is refused before anything is created."""
    root, folder = os.path.abspath(os.fspath(output_directory)), os.path.abspath(folder)
    if os.path.dirname(os.path.dirname(folder)) != root:
        raise FileExistsError(f"{folder} is outside {root}; run folders are real directories there")
    makedirs(folder)
    if os.path.islink(folder):
        raise FileExistsError(f"{folder} is a symlink; run folders are real directories in {root}")
    summary = os.path.join(folder, shard_stem(rank) + SUMMARY_SUFFIX)
    return RunPaths(root, os.path.dirname(folder), folder, summary, os.path.join(folder, RANK_CONFIG))


# --- README ------------------------------------------------------------------------------------------------
_README = """\
# Entropy probe logs (asynclog)

One folder per day; per run three files that share a name:

- `entropy_probe_<HH-MM-SS>_<checkpoint>.alog` - the main log, in asynclog's framed format:
  checksummed frames, zstandard-compressed, readable even if the probe crashed. The format is described
  in asynclog's `docs/FORMAT.md`; what the probe writes at each level in `docs/PROBE.md`.
- `..._summary.json` - the small summary: core results, timing, batch statistics, ground truth, and what
  logging cost (`logging_cost`). `"complete": false` means the probe ended before `finalize_log`.
- `..._config.yaml` - the exact configuration of the run.

Read a log:

    asynclog cat <file>.alog | jq .        # every record as a JSON line
    asynclog verify <file>.alog            # check every checksum

    import asynclog
    log = asynclog.open("<file>.alog")
    log.header["metadata"]; list(log.events(name="core_results")); log.rows("sequences/E_batch")

A job of several ranks (torch.distributed) writes each run as one folder instead of one `.alog` file:

    entropy_probe_<name>_<checkpoint>/
        manifest.json              the ranks to expect (written by rank 0)
        rank-NNNNN.alog            each rank's own log: its phases, batch statistics, rows and tensors
        rank-NNNNN_summary.json    each rank's summary
        config.yaml                the exact configuration of the run (rank 0)

`<name>` stands in for the time: a name every rank shares (`run_name`, the launcher's job id, or rank 0's
time when broadcast). Results the probe reduced already (core results, ground truth, final results) are in
rank 0's log only. `asynclog.open("<folder>")` reads every rank as one run; `log.batch_statistics()`
merges the ranks' batch statistics exactly.

Old runs beyond `max_files` are removed automatically: only runs the probe's logger wrote here, with the
same file-name template (marked so in their header); a run folder of several ranks counts as one run and
goes as a whole; nothing else in these folders is touched.
"""


def ensure_readme(root: str) -> str:
    """Write the logs root's README.md unless one is there already (a user may have edited it)."""
    path = os.path.join(root, "README.md")
    if not os.path.lexists(path):
        try:
            atomic_write(path, _README, replace=False)
        except FileExistsError:
            pass  # another process wrote it first
    return path


# --- retention ---------------------------------------------------------------------------------------------
# Retention deletes files, in a folder others may share: it removes only runs this layout wrote, known by
# the marker it put in their header frame, and works through directory descriptors so that no link (a day
# folder, a log, a sidecar) is ever followed and no path can lead out of the output directory. Logs are read
# as every tool reads them (``ondisk``): opened only when regular, never through a link, header frame and
# footer within ondisk's limit, and "closed" by ondisk's one rule.
STALE_SECONDS = 7 * 24 * 3600  # a log without a footer is left alone until it has not changed for this long
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Run(NamedTuple):
    """One run of this layout's, found by its marker. Whether it is closed is not known yet: footers are read
    only for the runs retention is about to remove (``_closed``)."""

    mtime: float
    day: str
    stem: str
    identity: tuple[int, int]  # (st_dev, st_ino) of the main log, or of the run folder
    owned: bool  # each of its logs that is a regular file has one name
    stale: bool  # unchanged for STALE_SECONDS: removable even without its footers
    folder: bool = False  # a run folder of several ranks


def marker(template: str, paths: RunPaths) -> dict:
    """What a run of this layout carries in its header metadata (key ``layout``), so retention knows it."""
    return {"id": LAYOUT_ID, "template": template, "stem": os.path.basename(paths.main).removesuffix(SUFFIX)}


def _owned(st: os.stat_result) -> bool:
    """A regular file with one name: a link, or a file someone else also named, is never removed."""
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


def _layout_marker(f: BinaryIO) -> dict | None:
    """The ``layout`` marker in the header frame (None without one)."""
    found = ondisk.header_of(f).get("metadata")
    found = found.get("layout") if isinstance(found, dict) else None
    return found if isinstance(found, dict) else None


def _finished(f: BinaryIO) -> bool:
    """Whether its writer closed the log: a sound header frame and footer (``ondisk.Peek.closed``)."""
    return ondisk.peek(f).closed


def _read_log(dir_fd: int, name: str, read: Callable[[BinaryIO], _T]) -> tuple[os.stat_result, _T] | None:
    """(stat, ``read(file)``) of the regular log ``name`` in the folder; None for anything else."""
    try:
        with ondisk.open_regular(name, follow=False, dir_fd=dir_fd) as f:
            return os.fstat(f.fileno()), read(f)
    except (OSError, CorruptLogError):
        return None


def _stat_log(dir_fd: int, name: str) -> os.stat_result | None:
    """The stat of the regular log ``name`` in the folder, not opened; None for anything else."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _read_run(day_fd: int, day: str, name: str, template: str) -> _Run | None:
    """The run whose main log (or run folder) is ``name`` in the day folder, if this layout wrote it with
    ``template``."""
    if not name.endswith(SUFFIX):
        return _read_rank_run(day_fd, day, name, template)
    read = _read_log(day_fd, name, _layout_marker)
    stem = name[: -len(SUFFIX)]
    if read is None or read[1] != {"id": LAYOUT_ID, "template": template, "stem": stem}:
        return None
    st = read[0]
    return _Run(st.st_mtime, day, stem, (st.st_dev, st.st_ino), st.st_nlink == 1, _stale(st.st_mtime))


def _read_rank_run(day_fd: int, day: str, name: str, template: str) -> _Run | None:
    """A run folder of a job of several ranks, as one run: known by the marker in rank 0's shard (the only
    shard opened here), as old as its newest shard, owned when every shard has one name."""
    try:
        with _folder(day_fd, name) as folder_fd:  # a file or a link fails here
            folder = os.fstat(folder_fd)
            first = _read_log(folder_fd, shard_name(0), _layout_marker)
            if first is None or first[1] != {"id": LAYOUT_ID, "template": template, "stem": name}:
                return None
            names = [n for n in os.listdir(folder_fd) if _SHARD.match(n) and n != shard_name(0)]
            others = [_stat_log(folder_fd, n) for n in names]
    except OSError:
        return None
    # A shard that is no regular file (a link, a FIFO) is left out here; _closed finds it not closed.
    read = [first[0], *filter(None, others)]
    mtime = max(st.st_mtime for st in read)
    owned = all(st.st_nlink == 1 for st in read)
    return _Run(mtime, day, name, (folder.st_dev, folder.st_ino), owned, _stale(mtime), folder=True)


def _stale(mtime: float) -> bool:
    return time.time() - mtime > STALE_SECONDS


def _closed(root_fd: int, run: _Run) -> bool:
    """Whether every log of the run has its footer; read only for a run old enough to be removed."""
    try:
        with _folder(root_fd, run.day) as day_fd:
            if not run.folder:
                return _closed_log(day_fd, run.stem + SUFFIX)
            with _folder(day_fd, run.stem) as folder_fd:
                return all(_closed_log(folder_fd, n) for n in os.listdir(folder_fd) if _SHARD.match(n))
    except OSError:
        return False


def _closed_log(dir_fd: int, name: str) -> bool:
    read = _read_log(dir_fd, name, _finished)
    return read is not None and read[1]


@contextlib.contextmanager
def _folder(dir_fd: int, name: str):
    """The folder ``name`` in ``dir_fd``, opened as a directory descriptor (never through a link)."""
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def _day_runs(root_fd: int, day: str, template: str) -> list[_Run]:
    try:
        with _folder(root_fd, day) as day_fd:  # a linked day folder fails here
            return [run for name in os.listdir(day_fd) if (run := _read_run(day_fd, day, name, template))]
    except OSError:
        return []


def _remove_run(root_fd: int, run: _Run) -> list[str]:
    """Unlink the run's log (or run folder), if it is still the one that was read, and its sidecars; return
    what went."""
    try:
        with _folder(root_fd, run.day) as day_fd:  # fails if gone, or turned into a link, since it was read
            removed = (_remove_folder_run if run.folder else _remove_file_run)(day_fd, run)
    except OSError:
        return []
    try:
        os.rmdir(run.day, dir_fd=root_fd)
    except OSError:
        pass  # not empty: other files live there
    return removed


def _remove_file_run(day_fd: int, run: _Run) -> list[str]:
    st = os.stat(run.stem + SUFFIX, dir_fd=day_fd, follow_symlinks=False)
    if (st.st_dev, st.st_ino) != run.identity:
        return []  # replaced since it was read: not the run that was recognised
    names = [run.stem + suffix for suffix in (SUFFIX, SUMMARY_SUFFIX, CONFIG_SUFFIX)]
    return [os.path.join(run.day, name) for name in names if _unlink_owned(day_fd, name)]


def _remove_folder_run(day_fd: int, run: _Run) -> list[str]:
    """The run folder's own files (shards, summaries, manifest, config), then the folder if that empties it."""
    with _folder(day_fd, run.stem) as folder_fd:
        st = os.fstat(folder_fd)
        if (st.st_dev, st.st_ino) != run.identity:
            return []
        names = sorted(n for n in os.listdir(folder_fd) if _RANK_FILE.match(n))
        removed = [os.path.join(run.day, run.stem, n) for n in names if _unlink_owned(folder_fd, n)]
    try:
        os.rmdir(run.stem, dir_fd=day_fd)
    except OSError:
        pass  # something else lives there: left as it is
    return removed


def _unlink_owned(dir_fd: int, name: str) -> bool:
    try:
        if _owned(os.stat(name, dir_fd=dir_fd, follow_symlinks=False)):
            os.unlink(name, dir_fd=dir_fd)
            return True
    except OSError:
        pass  # gone already (another process may be pruning too), or not ours to remove
    return False


def prune(root: str, keep: int, template: str, protect: str | None = None) -> list[str]:
    """Remove this layout's oldest runs made with ``template``, beyond the newest ``keep``; return the files removed.

    A run is known by its marker (see ``marker``), read from the header frame of a regular ``.alog`` file in
    a day folder (of a run folder's ``rank-00000.alog``); the marker must name this template and the file's
    (the folder's) own stem. A run folder goes as a whole: its shards, summaries, manifest and config.
    Removing a run unlinks its log and its summary and config sidecars. Never removed: ``protect`` (the run
    being opened, which counts as one of the ``keep``), a link or a file with more than one name, a run whose
    footer is missing (any shard's) that changed within STALE_SECONDS (another process may be writing it),
    a run between its footer and its summary (it holds ``closing``), anything else in the folders. A day
    folder is removed only when that leaves it empty. ``keep <= 0`` keeps everything.

    What it reads, so that a sweep stays cheap with many ranks and many kept runs: one header per run (the
    main log's, or rank 0's shard's; the other shards are only stat'ed), and footers only of the runs beyond
    ``keep`` that are not yet stale.
    """
    if keep <= 0:
        return []
    with _retention_lock(root, fcntl.LOCK_EX):
        return _prune(root, keep, template, protect)


def closing(root: str):
    """Hold while a run under ``root`` gets its footer and then its summary: ``prune`` waits until both are there.

    Between the two a run looks finished (its footer) but its summary is still to come; a prune then would
    remove the log and leave the summary written after it, an orphan whose name the next run avoids with
    ``-1``. Shared, so that any number of runs close at once; ``prune`` takes the same lock exclusively.
    """
    return _retention_lock(root, fcntl.LOCK_SH)


@contextlib.contextmanager
def _retention_lock(root: str, mode: int):
    """``flock`` on the output directory itself (no lock file): one pruning process at a time (``LOCK_EX``), never
    while a run is closing (``LOCK_SH``, ``closing``).

    On a local file system this is exact. On NFS, flock is emulated with byte-range locks (Linux >= 2.6.12) and
    holds between clients only where the server supports locking; where it does not, two sweeps may prune at
    once, which at worst removes a run both consider old — never one still being written (see ``prune``).
    """
    fd = None
    try:
        fd = os.open(root, _DIR_FLAGS)
        fcntl.flock(fd, mode)
    except OSError:
        pass  # no lock to be had on this file system: prune unlocked, as the docstring allows
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _prune(root: str, keep: int, template: str, protect: str | None) -> list[str]:
    base = os.path.abspath(root)
    try:
        root_fd = os.open(os.path.realpath(base), _DIR_FLAGS)
    except OSError:
        return []
    try:
        shielded = _identity(protect)
        runs = [run for day in os.listdir(root_fd) if _DAY.match(day)
                for run in _day_runs(root_fd, day, template) if run.identity != shielded]
        runs.sort(key=lambda run: run.mtime, reverse=True)  # newest first
        old = [run for run in runs[keep - (protect is not None):] if run.owned]
        doomed = [run for run in old if run.stale or _closed(root_fd, run)]
        return [os.path.join(base, name) for run in reversed(doomed) for name in _remove_run(root_fd, run)]
    finally:
        os.close(root_fd)


def _identity(path: str | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
