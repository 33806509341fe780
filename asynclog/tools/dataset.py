"""Many runs as one Parquet dataset: ``asynclog export DIR --dataset OUT`` and ``asynclog query``.

Layout (hive partitioning: any engine that reads ``key=value`` folders finds ``checkpoint`` and ``rank``)::

    OUT/
    ├── _asynclog_exported.json                                     what it holds: the folders exported, and
    │                                                               each run's path, stamp and files
    ├── _asynclog_exported.lock                                     one export into OUT at a time
    ├── _asynclog_staging/                                          an export's runs until merged (packs.py)
    ├── table=runs/part-<id>.parquet                                one row per run: run, run_name, COLUMNS
    ├── table=events/checkpoint=<c>/rank=<r>/part-<id>.parquet      run, type, name, time, data (JSON text)
    ├── table=sequences/checkpoint=<c>/rank=<r>/part-<id>.parquet   run, batch, one row per sequence
    ├── table=importance/checkpoint=<c>/rank=<r>/part-<id>.parquet  run, batch, one row per sequence
    └── table=tokens/checkpoint=<c>/rank=<r>/part-<id>.parquet      run, batch, position, one row per token

Each file is a pack of many runs' rows or one run's own (``<id>`` is then the run): ``packs.Merge`` keeps each
folder of a table at a few files, however many runs it holds.

Identity: ``<run>``, the ``run`` column of every table and the key to join on, is ``run_identity``: what the
run was when it started, not where it is, so two runs never share it and a run moved or exported from
another folder keeps it. The runs table adds a readable ``run_name`` (the run's path below the folder it was
exported from, without ``.alog``) and its ``path``. ``checkpoint`` is the run's checkpoint name (``asynclog
ls`` shows it) in letters, digits, ``_``, ``.`` and ``-``; ``rank`` is 0 for a plain run and each shard's rank
for a run folder of ranks; both are strings, in every engine's read that docs/DATASET.md gives.

Sync: an export of DIR makes the dataset hold what DIR holds. A run new or changed there is staged, then merged
into its folders' packs in place of its old rows; one unchanged (the size, mtime, ctime and inode of each of its
files, as the state holds them) is skipped; one moved within DIR keeps its rows and gets a new runs row; a copy
of a run held already is named on stderr and not held twice; a run the state recorded below DIR that DIR no
longer holds (retention removed it, or it moved out) is removed. Runs exported from other folders are left alone.
Any file of the tables that no run of the state names (a killed export's temporary file, a part whose run was not
recorded) is removed. The state is replaced atomically at most every 2 s and once more at the end, so an export
killed outright writes again the runs of its last 2 s (their rows are replaced, not doubled).

A run a table cannot hold (a column whose type changes between chunks, numbers and text in one column, a
per-token column longer than its tokens) is skipped, with one line on stderr naming it and why, and the
others are exported (``Exported.skipped``; the console script exits 1). A per-token column shorter than the
tokens is aligned to the last tokens (``tables.per_token``).

A column null in every row of a part file is written as float64 (the probe's optional columns are numbers).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

from asynclog import _ondisk as ondisk
from asynclog._files import atomic_write, makedirs
from asynclog._format import SUFFIX
from asynclog._ranks import MANIFEST
from asynclog._tables import EVENT_BATCH, STREAM_KINDS, arrow_batch, event_row, groups, need, per_token, shards_of
from asynclog.errors import AsyncLogError, ExportError
from asynclog.tools import index
from asynclog.tools.analysis import COLUMNS, NUMBERS, find_logs, read_run, row, run_sources
from asynclog.tools.packs import STAGING, Merge, staged_file

__all__ = ["export_dataset", "Exported", "run_identity", "is_dataset", "connect", "table", "table_files", "STATE",
           "TABLES", "PARTITIONS"]

STATE = "_asynclog_exported.json"
LOCK = "_asynclog_exported.lock"
TABLES = ("runs", "events", "sequences", "importance", "tokens")
PARTITIONS = ("checkpoint", "rank")  # the hive keys of every table but runs; strings
_FORMAT = "asynclog-dataset/3"  # the state's: a file may hold many runs (packs.py); 1 named runs by their path
_READ = (_FORMAT, "asynclog-dataset/2")  # 2: each file one run's, which 3 reads as it is
_INTEGERS = frozenset({"size", "dropped"})  # of analysis.NUMBERS, the counts; the others are float64
_SAVE_EVERY = 2.0  # seconds between saves of the state file during an export
_PART = re.compile(r"table=[a-z]+/(checkpoint=[^/]+/rank=\d+/)?part-[0-9a-f]{16}\.parquet")  # what _part names

Sources = list[Callable[[], Iterator]]  # each call gives a fresh pass over one stream's Arrow batches


class Exported(list):
    """What an export did: the files it put in the tables (the list itself), and ``skipped`` (path, why) for each run
    a table cannot hold, ``copies`` (path, the path the dataset holds the run from) for each copy of a run it
    holds already, ``removed`` the paths of the runs it removed because their folder no longer holds them."""

    def __init__(self):
        super().__init__()
        self.skipped: list[tuple[str, str]] = []
        self.copies: list[tuple[str, str]] = []
        self.removed: list[str] = []


# --- which runs, and who they are ----------------------------------------------------------------------------
def _runs(directory: str) -> tuple[str, str, list[str]]:
    """What an export of ``directory`` takes: the source (absolute), the folder run names are relative to,
    and the runs (absolute)."""
    from asynclog._shards import is_run_folder

    source = os.path.abspath(directory)
    if os.path.isfile(source) or is_run_folder(source):
        return source, os.path.dirname(source), [source]
    if not os.path.isdir(source):
        raise FileNotFoundError(2, "No such file or directory", directory)
    return source, source, [os.path.abspath(p) for p in find_logs(source)]


def run_identity(path: str) -> str:
    """The run's identity, 16 hex digits: the same wherever the run is moved or copied to, different for any
    two runs.

    A log's is a hash of its first bytes, the preamble and the header frame: ``start()`` writes them once,
    before anything else, and they hold the run's name, its start time to the microsecond, host, pid,
    metadata and config, so two runs share them only when one is a copy of the other. A run folder of ranks
    is its ``manifest.json`` (rank 0's run name, world size and start time, written once). A file that does
    not begin with a header frame (not a log; a damaged one; one reserved whose start was never written) has
    neither: it is its file, device and inode (a move within a file system keeps them), and its first 4 KiB.
    """
    digest = hashlib.blake2b(digest_size=8)
    if os.path.isdir(path):
        digest.update(b"run folder\0" + ondisk.head(os.path.join(path, MANIFEST), ondisk.MANIFEST_LIMIT))
    elif (first := ondisk.first_frame(path)) is not None:
        digest.update(b"log\0" + first)
    else:
        st = os.stat(path)
        digest.update(b"file\0%d\0%d\0" % (st.st_dev, st.st_ino) + ondisk.head(path, 4096))
    return digest.hexdigest()


def _stamp(path: str) -> list[list]:
    """What tells that a run's files changed: for each file ``read_run`` reads for it (the log or the run
    folder's files, and summary sidecars; not a sweep's index, a cache), its name from the run's own
    (``.alog``, ``_summary.json``, ``/rank-00000.alog``), size, mtime, ctime and inode. A run moved keeps
    the first three (``_content``)."""
    folder, name = os.path.split(path)
    stem = name.removesuffix(SUFFIX)
    return [[n[len(stem):], *rest] for n, *rest in index.stamp(folder, run_sources(path, name))]


def _content(stamp: list[list]) -> list[list]:
    return [entry[:3] for entry in stamp]


def _readable(text: str) -> str:
    """``text`` fit for an Arrow string: a name's bytes that are not UTF-8 (a file name may hold any) as
    ``\\xNN``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _folder_value(text: str) -> str:
    """A partition value fit for a folder name that every engine reads back as written: letters and digits of
    any script, ``_``, ``.`` and ``-``; a run of anything else (``/``, ``=``, ``%`` that some engines decode,
    spaces, bytes that are not UTF-8) becomes ``_``."""
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "_"


def _below(path: str, source: str) -> bool:
    return path == source or path.startswith(source.rstrip(os.sep) + os.sep)


def _refuse_partition_like(out: str) -> None:
    """A dataset below a folder named ``key=value`` is refused: DuckDB (and other engines) read hive keys
    from the whole path, so ``checkpoint=old/`` above it would set every row's checkpoint to ``old``."""
    for part in os.path.abspath(out).split(os.sep):
        if "=" in part:
            raise ExportError(f"--dataset {out}: its folder {part!r} looks like a partition (key=value), which "
                              f"DuckDB and others would read as a column of every row; choose a path without '='")


# --- the state: what the dataset holds -------------------------------------------------------------------------
def _read_state(out: str) -> dict:
    """The state, or an empty one when there is none, it cannot be read, or an older asynclog wrote it (naming
    runs by their path): the sync then removes every part it does not name, and writes the runs again."""
    state = _load_state(out)
    if state is None:
        state = {"format": _FORMAT, "sources": {}, "runs": {}}
        if os.path.lexists(os.path.join(out, STATE)):
            print(f"asynclog export: {out}: {STATE} is unreadable or from an older asynclog; its tables are written "
                  "again (runs exported from other folders come back when those are exported)", file=sys.stderr)
    return state


def _load_state(out: str) -> dict | None:
    """The state, its runs' entries checked; None when there is none, it cannot be read, or an older asynclog
    wrote it."""
    try:
        with open(os.path.join(out, STATE), "rb") as f:
            state = json.loads(f.read())
    except (OSError, ValueError):  # none; not JSON, or not UTF-8
        return None
    if not (isinstance(state, dict) and state.get("format") in _READ and isinstance(state.get("runs"), dict)
            and isinstance(state.get("sources"), dict)):
        return None
    state["runs"] = {run: entry for run, entry in state["runs"].items() if _is_entry(entry)}
    state["format"] = _FORMAT
    return state


def _is_entry(entry) -> bool:
    """Whether a run's entry is one an export wrote: parts named as ``_part`` names them, so that a state
    someone edited cannot have an export remove a file outside the tables."""
    return (isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("stamp"), list)
            and isinstance(entry.get("checkpoint"), str) and isinstance(entry.get("parts"), list)
            and all(isinstance(p, str) and _PART.fullmatch(p) for p in entry["parts"]))


def _save_state(out: str, state: dict) -> None:
    """JSON whose strings are ASCII escapes where needed: a path that is not UTF-8 comes back as it was."""
    atomic_write(os.path.join(out, STATE), json.dumps(state, separators=(",", ":")))


@contextlib.contextmanager
def _one_export_at_a_time(out: str) -> Iterator[None]:
    """Hold ``out``'s lock: a second export into it waits, saying so, until the first ends (its sync would
    otherwise remove the parts the other is writing)."""
    fd = os.open(os.path.join(out, LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"asynclog export: {out}: another export into it is running; waiting for it", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _tidy(out: str, runs: dict) -> None:
    """Remove from ``out``'s tables every file no run of the state names (a killed export's temporary files;
    a pack renamed into place just before a kill, whose runs are then written again; the files a pack replaced;
    parts an older asynclog wrote twice), then the folders left empty, the staging folder, and the state's own
    stale temporary files."""
    shutil.rmtree(os.path.join(out, STAGING), ignore_errors=True)
    keep = {os.path.normpath(part) for entry in runs.values() for part in entry["parts"]}
    for table in TABLES:
        for folder, _, names in os.walk(os.path.join(out, f"table={table}"), topdown=False):
            for name in names:
                if os.path.relpath(os.path.join(folder, name), out) not in keep:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(folder, name))
            with contextlib.suppress(OSError):  # only when empty
                os.rmdir(folder)
    for name in os.listdir(out):
        if name.startswith(STATE + ".") and name.endswith(".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(out, name))


def _forget_missing(out: str, runs: dict) -> None:
    """A run whose files are not all there (someone removed one) is written again by this export: its entry
    loses its stamp and the missing files."""
    for entry in runs.values():
        there = [p for p in entry["parts"] if os.path.isfile(os.path.join(out, p))]
        if there != entry["parts"]:
            entry["parts"], entry["stamp"] = there, []


# --- one export: a sync of the source into the dataset ----------------------------------------------------------
def export_dataset(directory: str | os.PathLike, out: str | os.PathLike) -> Exported:
    """Make the dataset ``out`` hold the runs below ``directory`` (a folder of runs, a run folder of ranks or
    one log) as the module docstring says; return what was written, skipped and removed."""
    directory, out = os.fspath(directory), os.fspath(out)
    _refuse_partition_like(out)
    source, base, runs = _runs(directory)
    makedirs(out)
    with _one_export_at_a_time(out):
        sync = _Sync(out, source, base)
        try:
            for path in runs:
                sync.add(path)
            sync.remove_gone()
            sync.merge()
        finally:
            sync.save()
        _tidy(out, sync.runs)
    return sync.result


class _Sync:
    """One export of ``source`` into ``out``: ``add`` each run the source holds (its rows staged), then
    ``remove_gone``, ``merge`` (the staged rows into the tables' packs), ``save``."""

    def __init__(self, out: str, source: str, base: str):
        self.out, self.source, self.base = out, source, base
        self.state = _read_state(out)
        self.runs: dict[str, dict] = self.state["runs"]
        _tidy(out, self.runs)
        _forget_missing(out, self.runs)
        self.staging = os.path.join(out, STAGING)
        self.staged: dict[str, list[tuple[str, str]]] = defaultdict(list)  # each folder's (run, staged file)
        self.pending: dict[str, dict] = {}  # each run staged: its entry once merged, with the parts it keeps
        self.at = {entry["path"]: run for run, entry in self.runs.items()}  # the run recorded at each path
        self.found: dict[str, str] = {}  # each run found, and the path the dataset holds it from
        self.result = Exported()
        self.saved = time.monotonic()

    def add(self, path: str) -> None:
        """Bring one run the source holds into the dataset (unless it is there as it is, or a copy)."""
        try:
            stamp = _stamp(path)
            run = self.at.get(path)
            if run is None or self.runs[run]["stamp"] != stamp:
                run = run_identity(path)
        except FileNotFoundError:
            return  # gone since the folder was listed
        if self._copy(run, path):
            return
        self.found[run] = path
        entry = self.runs.get(run)
        if entry is None or entry["path"] != path or entry["stamp"] != stamp:
            self._write_run(run, path, stamp, entry)

    def _copy(self, run: str, path: str) -> bool:
        """Whether the dataset holds ``run`` from another path: one found before in this export, or the one it
        was exported from if the run is still there as it was then. Said on stderr."""
        entry, holder = self.runs.get(run), self.found.get(run)
        if holder is None and entry is not None and entry["path"] != path and _stamp(entry["path"]) == entry["stamp"]:
            holder = entry["path"]
        if holder is None or holder == path:
            return False
        self.found.setdefault(run, holder)
        self.result.copies.append((path, holder))
        print(f"asynclog export: {path}: a copy of {holder} (the same run), which the dataset holds already",
              file=sys.stderr)
        return True

    def _write_run(self, run: str, path: str, stamp: list, entry: dict | None) -> None:
        """Stage a run new or changed; of a run moved whose files are the same, only its runs row."""
        facts = row(read_run(path))
        checkpoint = _folder_value(facts["checkpoint"] or os.path.basename(path).removesuffix(SUFFIX))
        if entry is not None and _content(entry["stamp"]) == _content(stamp) and entry["checkpoint"] == checkpoint:
            batch = _run_batch(run, self._name(path), facts)
            _write(os.path.join(self.staging, _part("runs", run)), [lambda: iter([batch])])
            parts, keep = [_part("runs", run)], [p for p in entry["parts"] if not p.startswith("table=runs" + os.sep)]
        else:
            try:
                parts = _export_run(path, run, self._name(path), facts, checkpoint, self.staging)
            except ExportError as exc:
                return self._skip(run, path, str(exc))
            keep = []
        for part in parts:
            self.staged[os.path.dirname(part)].append((run, os.path.join(self.staging, part)))
        self.pending[run] = {"path": path, "stamp": stamp, "checkpoint": checkpoint, "parts": keep}
        self.at[path] = run

    def _name(self, path: str) -> str:
        return _readable(os.path.relpath(path, self.base).removesuffix(SUFFIX))

    def _skip(self, run: str, path: str, why: str) -> None:
        """A run a table cannot hold: none of its rows stay (an older export of it neither)."""
        self.result.skipped.append((path, why))
        print(f"asynclog export: {path}: skipped, a table cannot hold it: {why}", file=sys.stderr)
        self._drop(run)

    def _drop(self, run: str) -> None:
        """The run leaves the dataset: its own files go with the next tidy, its rows in packs with the merge."""
        if self.runs.pop(run, None) is not None:
            self._changed()

    def remove_gone(self) -> None:
        """Remove each run recorded below the source that the source no longer holds."""
        for run, entry in list(self.runs.items()):
            if run not in self.found and _below(entry["path"], self.source):
                self.result.removed.append(entry["path"])
                self._drop(run)

    def merge(self) -> None:
        """Bring the staged runs into the tables (``packs.Merge``). Until it ends, each staged run's entry has no
        stamp, so a kill has the next export write it again; the files it had where it is staged again stay
        named until a pack replaces them."""
        restaged = defaultdict(set)  # each run's folders
        for folder, pairs in self.staged.items():
            for run, _ in pairs:
                restaged[run].add(folder)
        for run, pending in self.pending.items():
            old = self.runs.get(run, {"parts": []})["parts"]
            self.runs[run] = {**pending, "stamp": [], "parts": pending["parts"] + [
                p for p in old if os.path.dirname(p) in restaged[run] and p not in pending["parts"]]}
        merge = Merge(self.out, self.runs, self.staged, self.save)
        merge.run(_SAVE_EVERY, time.monotonic)
        for run, pending in self.pending.items():
            self.runs[run]["stamp"] = pending["stamp"]
        self.result += merge.written

    def _changed(self) -> None:
        if time.monotonic() - self.saved >= _SAVE_EVERY:  # a save writes every run's entry: once a run is quadratic
            self.save()

    def save(self) -> None:
        self.state["sources"][self.source] = {"exported": time.time()}
        _save_state(self.out, self.state)
        self.saved = time.monotonic()


# --- one run ---------------------------------------------------------------------------------------------
def _export_run(path: str, run: str, name: str, facts: dict, checkpoint: str, out: str) -> list[str]:
    """Write the run's part files; return them relative to ``out``. ExportError, and none of them left, when a
    table cannot hold the run."""
    from asynclog._shards import open_log

    parts = []
    try:
        if _write(os.path.join(out, _part("runs", run)), [lambda: iter([_run_batch(run, name, facts)])]):
            parts.append(_part("runs", run))
        try:
            log = open_log(path)
        except (AsyncLogError, OSError) as exc:
            print(f"asynclog export: {path}: only its runs row is exported ({exc})", file=sys.stderr)
            return parts
        with log:
            for rank, shard in shards_of(log):
                for table, sources in _tables(shard, run).items():
                    part = _part(table, run, checkpoint, rank or 0)  # a single file is rank 0
                    if _write(os.path.join(out, part), sources):
                        parts.append(part)
    except (ValueError, TypeError, NotImplementedError) as exc:  # ExportError, and pyarrow's ArrowInvalid,
        for part in parts:                                        # ArrowTypeError, ArrowNotImplementedError
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(out, part))
        raise ExportError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return parts


def _part(table: str, run: str, checkpoint: str | None = None, rank: int | None = None) -> str:
    where = [f"table={table}"] + ([] if checkpoint is None else [f"checkpoint={checkpoint}", f"rank={rank}"])
    return os.path.join(*where, f"part-{run}.parquet")


def _run_batch(run: str, name: str, facts: dict):
    pa = need("pyarrow", "export")
    fields = [pa.field("run", pa.string()), pa.field("run_name", pa.string())] + [
        pa.field(c, pa.int64() if c in _INTEGERS else pa.float64() if c in NUMBERS else pa.string())
        for c in COLUMNS]
    values = {c: _readable(v) if isinstance(v, str) else v for c, v in facts.items()}
    return pa.RecordBatch.from_pylist([{"run": run, "run_name": name, **values}], schema=pa.schema(fields))


def _tables(log, run: str) -> dict[str, Sources]:
    """Each table's sources for one shard: events, and every stream of each kind."""
    tables: dict[str, Sources] = {"events": [lambda: _event_batches(log, run)]}
    for name in log.stream_names():
        kind, _, batch = name.partition("/")
        if kind in STREAM_KINDS:
            per_row = per_token if kind == "tokens" else dict
            tables.setdefault(kind, []).append(
                lambda name=name, batch=batch, per_row=per_row: _stream_batches(log, name, run, batch, per_row))
    return tables


def _event_batches(log, run: str) -> Iterator:
    for group in groups(log.events(), EVENT_BATCH):
        rows = [event_row(r) for r in group]
        yield arrow_batch({"run": [run] * len(rows), **{k: [r[k] for r in rows] for k in rows[0]}})


def _stream_batches(log, name: str, run: str, batch: str, per_row: Callable[[dict], dict]) -> Iterator:
    for chunk in log.stream(name):
        if not chunk.columns or not len(next(iter(chunk.columns.values()))):
            continue
        try:
            arrow = arrow_batch(per_row(chunk.columns))
        except ExportError as exc:
            raise ExportError(f"stream {name!r}, {exc}") from None
        yield _prepend(arrow, {"run": run, "batch": batch})


def _prepend(batch, constants: dict):
    """``batch`` after one column per constant, each its value in every row (a chunk's own ``run`` or
    ``batch`` column gives way). ``pa.repeat`` fills them in Arrow: a Python list of a value per token row
    was most of a chunk's cost."""
    pa = need("pyarrow", "export")
    rest = [n for n in batch.schema.names if n not in constants]
    arrays = [pa.repeat(value, batch.num_rows) for value in constants.values()]
    return pa.RecordBatch.from_arrays(arrays + [batch.column(n) for n in rest], names=[*constants, *rest])


# --- one part file ------------------------------------------------------------------------------------------
class _Misfit(ExportError):
    """A batch whose columns do not fit the part file's schema, made from the first batches."""


def _schema(firsts: list, sources: Sources, every: bool = False):
    """One schema for every source's batches: their first batches' unified, or every batch's (read once more)
    when asked or when a column is still all null in the first ones; a column null throughout as float64.
    None when there are no rows."""
    pa = need("pyarrow", "export")
    firsts = [b for b in firsts if b is not None]
    if not firsts:
        return None
    schema = _unify([b.schema for b in firsts])
    if every or any(pa.types.is_null(f.type) for f in schema):
        schema = _unify([schema, *(b.schema for source in sources for b in source())])
    return pa.schema([f.with_type(pa.float64()) if pa.types.is_null(f.type) else f for f in schema])


def _unify(schemas: list):
    """The schemas as one, types promoted (an integer column that holds floats elsewhere is float64);
    ExportError when a column holds numbers in one chunk and text (or lists) in another."""
    pa = need("pyarrow", "export")
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ExportError(f"a column's type changes between chunks ({str(exc).splitlines()[0]})") from None


def _conform(batch, schema):
    """``batch`` with ``schema``'s columns in its order: cast, and columns it lacks as nulls."""
    pa = need("pyarrow", "export")
    if batch.schema == schema:
        return batch
    names = batch.schema.names
    try:
        arrays = [batch.column(f.name).cast(f.type) if f.name in names else pa.nulls(batch.num_rows, f.type)
                  for f in schema]
    except (ValueError, TypeError, NotImplementedError) as exc:  # pa.ArrowInvalid, ArrowTypeError, ...
        raise _Misfit(f"a chunk does not fit the columns of the first chunks ({str(exc).splitlines()[0]})") from None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _dictionary_columns(schema, firsts: list) -> list[str]:
    """The Parquet columns worth a dictionary: a flat column whose values repeat in the first batch that has
    it (at most half of them distinct), and every nested one (as Parquet's default). Names, ids and positions
    repeat; measured values and ids drawn from a large range are nearly all distinct, and a dictionary there
    made the file bigger and took most of the write's time. Parquet's own fallback to plain values comes only
    past a 1 MiB dictionary, which a chunk's row group seldom reaches. Parquet names a nested column's leaves
    by path (``x.list.element``), so the paths are the ones an empty file of ``schema`` gets."""
    import io

    pa, pq = need("pyarrow", "export"), need("pyarrow.parquet", "export")
    empty = io.BytesIO()
    pq.write_table(schema.empty_table(), empty)
    leaves = pq.read_metadata(io.BytesIO(empty.getvalue())).schema
    flat = {f.name for f in schema if not pa.types.is_nested(f.type)}
    present = [b for b in firsts if b is not None]
    samples = {name: b.column(name) for b in reversed(present) for name in b.schema.names}  # the first wins
    paths = [leaves.column(i).path for i in range(len(leaves))]
    return [p for p in paths if p not in flat or p not in samples or _repeats(samples[p])]


def _repeats(values) -> bool:
    """Whether at most half of the non-null values are distinct (True for none, or a type not counted)."""
    pc = need("pyarrow.compute", "export")
    present = len(values) - values.null_count
    try:
        return present == 0 or 2 * pc.count_distinct(values).as_py() <= present
    except NotImplementedError:  # pa.ArrowNotImplementedError: no count for this type
        return True


def _write(path: str, sources: Sources, every: bool = False) -> bool:
    """Write the sources' batches to one staged Parquet file, a batch at a time; False (nothing written) when
    empty.

    Each source's pass is begun once: its first batch serves for the schema and is then written, not decoded
    again. Only the first batches wait together (as the schema needs them all); the rest come one at a time.
    A later batch whose types differ from the first ones' (integers, then floats) starts the file again with
    every batch's types unified (``every``): a second pass, paid only then."""
    pq = need("pyarrow.parquet", "export")
    passes = [source() for source in sources]
    firsts = [next(rest, None) for rest in passes]
    schema = _schema(firsts, sources, every)
    if schema is None:
        return False
    makedirs(os.path.dirname(path))
    dictionary = _dictionary_columns(schema, firsts)
    try:
        with staged_file(path) as f, pq.ParquetWriter(f, schema, use_dictionary=dictionary) as writer:
            for k, rest in enumerate(passes):
                if firsts[k] is not None:
                    writer.write_batch(_conform(firsts[k], schema))
                    firsts[k] = None  # written: let it go
                for batch in rest:
                    writer.write_batch(_conform(batch, schema))
    except _Misfit:
        if every:
            raise
        return _write(path, sources, every=True)
    return True


# --- reading it back: DuckDB ------------------------------------------------------------------------------
def is_dataset(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    return os.path.isfile(os.path.join(path, STATE)) or any(
        os.path.isdir(os.path.join(path, f"table={t}")) for t in TABLES)


def table(dataset: str | os.PathLike, name: str):
    """One table of the dataset as a ``pyarrow.dataset.Dataset`` with every column any of its part files has.

    Runs differ in columns (a debug run has token texts, another run may not), and pyarrow, pandas and Dask
    take a dataset's columns from one file unless told otherwise; this gives them the union, with the types
    of ``_union``. ``checkpoint`` and ``rank`` are strings, as the folders hold them (inferred, ``007`` and
    ``7`` would both be the number 7). Only the files the state names are read (``files``).
    """
    if name not in TABLES:
        raise AsyncLogError(f"a dataset's tables are {', '.join(TABLES)}, not {name!r}")
    need("pyarrow", "export")
    import pyarrow as pa
    import pyarrow.dataset as ds

    folder = os.path.join(os.fspath(dataset), f"table={name}")
    files = table_files(dataset, name)
    if not files:
        raise AsyncLogError(f"{folder}: no such table in the dataset (export some runs first)")
    partitioning = None if name == "runs" else ds.partitioning(
        pa.schema([(key, pa.string()) for key in PARTITIONS]), flavor="hive")
    found = ds.dataset(files, partitioning=partitioning, partition_base_dir=folder)
    schemas = [fragment.physical_schema for fragment in found.get_fragments()]
    partitions = [partitioning.schema] if partitioning is not None else []
    return ds.dataset(files, partitioning=partitioning, partition_base_dir=folder,
                      schema=_union([*schemas, *partitions], [*files, *(["the folders"] * len(partitions))]))


def table_files(dataset: str | os.PathLike, name: str) -> list[str]:
    """The table's files that the dataset's state names: each run's rows in them once at every moment, while an
    export merges and after one was killed (packs.py). Without a state (or one an older asynclog wrote), every
    ``part-*.parquet`` of the table, never an export's temporary files."""
    dataset = os.fspath(dataset)
    state = _load_state(dataset)
    if state is None:
        folder = os.path.join(dataset, f"table={name}")
        return sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names
                      if f.startswith("part-") and f.endswith(".parquet"))
    prefix = f"table={name}{os.sep}"
    named = {part for entry in state["runs"].values() for part in entry["parts"] if part.startswith(prefix)}
    return [os.path.join(dataset, part) for part in sorted(named) if os.path.isfile(os.path.join(dataset, part))]


def _union(schemas: list, where: list[str]):
    """One schema over the part files': types unified as pyarrow promotes them (int64 and double as double); a
    column that is a number in one run's part and text in another's read as text. A column nested (a list)
    in one part and not in another cannot be one column: AsyncLogError says which and where."""
    pa = need("pyarrow", "export")
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    seen: dict[str, list] = {}
    for schema, place in zip(schemas, where):
        for field in schema:
            seen.setdefault(field.name, []).append((field.type, place))
    fields = []
    for name, types in seen.items():
        try:
            fields.append(_unify_one(name, [t for t, _ in types]))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            nested = [(t, p) for t, p in types if pa.types.is_nested(t)]
            if nested:
                (a, at), (b, bt) = nested[0], next((t, p) for t, p in types if t != nested[0][0])
                raise AsyncLogError(f"column {name!r} is {a} in {at} but {b} in {bt}: no one column holds "
                                    "both; read those parts apart (pyarrow.dataset.dataset([file, ...]))") from None
            fields.append(pa.field(name, pa.string()))
    return pa.schema(fields)


def _unify_one(name: str, types: list):
    pa = need("pyarrow", "export")
    return pa.unify_schemas([pa.schema([pa.field(name, t)]) for t in types], promote_options="permissive").field(0)


def connect(dataset: str | os.PathLike):
    """A DuckDB connection with one view per table the dataset holds (``sequences``, ``runs``, ...) over the files
    the state names (``table_files``): every file's columns (``union_by_name``), ``checkpoint`` and ``rank`` as
    strings (``hive_types_autocast=false``: inferred, ``007`` and ``7`` would both be the number 7)."""
    duckdb = need("duckdb", "query")
    con = duckdb.connect()
    for table in TABLES:
        files = table_files(dataset, table)
        if not files:
            continue
        listed = ", ".join("'" + path.replace("'", "''") + "'" for path in files)
        con.execute(f"create view {table} as select * exclude (\"table\") from read_parquet([{listed}], "
                    f"hive_partitioning=true, hive_types_autocast=false, union_by_name=true)")
    return con


