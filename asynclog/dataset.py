"""Many runs as one Parquet dataset: ``asynclog export DIR --dataset OUT`` and ``asynclog query``.

Layout (hive partitioning: any engine that reads ``key=value`` folders finds ``checkpoint`` and ``rank``)::

    OUT/
    ├── _asynclog_exported.json                                     the runs exported (path, files' stamps, parts)
    ├── table=runs/part-<run>.parquet                               one row per run: analysis.COLUMNS + run
    ├── table=events/checkpoint=<c>/rank=<r>/part-<run>.parquet     run, type, name, time, data (JSON text)
    ├── table=sequences/checkpoint=<c>/rank=<r>/part-<run>.parquet  run, batch, one row per sequence
    ├── table=importance/checkpoint=<c>/rank=<r>/part-<run>.parquet run, batch, one row per sequence
    └── table=tokens/checkpoint=<c>/rank=<r>/part-<run>.parquet     run, batch, position, one row per token

``<run>`` is the run's path below DIR without ``.alog`` (``/`` and other odd characters as ``_``); every
table carries it as the ``run`` column, the key to join on. ``checkpoint`` is the run's checkpoint name
(``asynclog ls`` shows it) or its file stem; ``rank`` is 0 for a plain run and each shard's rank for a run
folder of ranks. ``batch`` is the stream's batch (``E_batch`` for ``tokens/E_batch``).

Streaming: a part file is written one stream chunk at a time (4096 events at a time), through one
ParquetWriter, under a temporary name renamed once whole. Incremental: a run whose files (its log or its run
folder's files, and summary sidecars) have the size, mtime, ctime and inode ``_asynclog_exported.json`` holds
is skipped; one that changed is exported again and its old part files removed.
The state file is replaced atomically at most every 2 s and once more when the export ends or fails, so an
export killed outright exports again the runs of its last 2 s (their part files are replaced, not duplicated).

A column null in every row of a part file is written as float64 (the probe's optional columns are numbers).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Callable, Iterator

import msgspec

from . import index
from .analysis import COLUMNS, NUMBERS, find_logs, read_run, row, run_sources
from .errors import AsyncLogError
from .export import (EVENT_BATCH, STREAM_KINDS, ExportError, _arrow_batch, _groups, _per_token, event_row,
                     need, shards_of)
from .files import atomic_write, makedirs, replacing
from .format import SUFFIX

__all__ = ["export_dataset", "is_dataset", "connect", "table", "STATE", "TABLES"]

STATE = "_asynclog_exported.json"
TABLES = ("runs", "events", "sequences", "importance", "tokens")
_INTEGERS = frozenset({"size", "dropped"})  # of analysis.NUMBERS, the counts; the others are float64
_SAVE_EVERY = 2.0  # seconds between saves of the state file during an export
_json = msgspec.json.Encoder()

Sources = list[Callable[[], Iterator]]  # each call gives a fresh pass over one stream's Arrow batches


# --- which runs, which need exporting ------------------------------------------------------------------
def _runs(directory: str) -> tuple[list[str], str]:
    """The runs to export and the folder their ids are relative to."""
    from .shards import is_run_folder

    if os.path.isfile(directory) or is_run_folder(directory):
        return [directory], os.path.dirname(os.path.abspath(directory))
    if not os.path.isdir(directory):
        raise FileNotFoundError(2, "No such file or directory", directory)
    return find_logs(directory), directory


def run_id(path: str, base: str) -> str:
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(base)).removesuffix(SUFFIX)
    return _safe(relative)


def _safe(text: str) -> str:
    """A name fit for a file or a partition folder."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def _signature(path: str) -> list[list]:
    """What identifies the run's present contents: a stamp of every file ``read_run`` reads for it (the
    summary sidecar too; not the sweep index a run folder may keep: a cache, not the run)."""
    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    return [list(s) for s in index.stamp(folder, run_sources(path, name))]


def _read_state(out: str) -> dict:
    try:
        with open(os.path.join(out, STATE), "rb") as f:
            state = msgspec.json.decode(f.read())
    except FileNotFoundError:
        return {}
    except msgspec.DecodeError:
        return {}  # a state we cannot read: export everything again (parts are replaced, not duplicated)
    return state if isinstance(state, dict) else {}


def export_dataset(directory: str | os.PathLike, out: str | os.PathLike) -> list[str]:
    """Export every run below ``directory`` not yet in the dataset ``out``; return the part files written."""
    directory, out = os.fspath(directory), os.fspath(out)
    runs, base = _runs(directory)
    makedirs(out)
    state, written, unsaved, saved = _read_state(out), [], False, time.monotonic()
    try:
        for path in runs:
            key, signature = os.path.abspath(path), _signature(path)
            before = state.get(key) or {}
            if before.get("signature") == signature:
                continue
            parts = _export_run(path, run_id(path, base), out)
            for old in set(before.get("parts") or []) - set(parts):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(out, old))
            state[key], unsaved = {"signature": signature, "parts": parts}, True
            written += [os.path.join(out, p) for p in parts]
            if time.monotonic() - saved >= _SAVE_EVERY:  # a save writes every run's entry: once a run is quadratic
                _save_state(out, state)
                unsaved, saved = False, time.monotonic()
    finally:
        if unsaved:
            _save_state(out, state)
    return written


def _save_state(out: str, state: dict) -> None:
    atomic_write(os.path.join(out, STATE), _json.encode(state))


# --- one run ---------------------------------------------------------------------------------------------
def _export_run(path: str, run: str, out: str) -> list[str]:
    """Write the run's part files; return them relative to ``out``."""
    from .reader import open_log

    facts = row(read_run(path))
    stem = os.path.basename(path.rstrip(os.sep)).removesuffix(SUFFIX)
    checkpoint = _safe(facts["checkpoint"] or stem)
    parts = [_part(out, "runs", run)] if _write(os.path.join(out, _part(out, "runs", run)),
                                                [lambda: iter([_run_batch(run, facts)])]) else []
    try:
        log = open_log(path)
    except (AsyncLogError, OSError) as exc:
        print(f"asynclog export: {path}: only its runs row is exported ({exc})", file=sys.stderr)
        return parts
    with log:
        for rank, shard in shards_of(log):
            for table, sources in _tables(shard, run).items():
                part = _part(out, table, run, checkpoint, rank or 0)  # a single file is rank 0
                if _write(os.path.join(out, part), sources):
                    parts.append(part)
    return parts


def _part(out: str, table: str, run: str, checkpoint: str | None = None, rank: int | None = None) -> str:
    where = [f"table={table}"] + ([] if checkpoint is None else [f"checkpoint={checkpoint}", f"rank={rank}"])
    return os.path.join(*where, f"part-{run}.parquet")


def _run_batch(run: str, facts: dict):
    pa = need("pyarrow", "export")
    fields = [pa.field("run", pa.string())] + [
        pa.field(c, pa.int64() if c in _INTEGERS else pa.float64() if c in NUMBERS else pa.string())
        for c in COLUMNS]
    return pa.RecordBatch.from_pylist([{"run": run, **facts}], schema=pa.schema(fields))


def _tables(log, run: str) -> dict[str, Sources]:
    """Each table's sources for one shard: events, and every stream of each kind."""
    tables: dict[str, Sources] = {"events": [lambda: _event_batches(log, run)]}
    for name in log.stream_names():
        kind, _, batch = name.partition("/")
        if kind in STREAM_KINDS:
            per_row = _per_token if kind == "tokens" else dict
            tables.setdefault(kind, []).append(
                lambda name=name, batch=batch, per_row=per_row: _stream_batches(log, name, run, batch, per_row))
    return tables


def _event_batches(log, run: str) -> Iterator:
    for group in _groups(log.events(), EVENT_BATCH):
        rows = [event_row(r) for r in group]
        yield _arrow_batch({"run": [run] * len(rows), **{k: [r[k] for r in rows] for k in rows[0]}})


def _stream_batches(log, name: str, run: str, batch: str, per_row: Callable[[dict], dict]) -> Iterator:
    pa = need("pyarrow", "export")
    for chunk in log.stream(name):
        if not chunk.columns or not len(next(iter(chunk.columns.values()))):
            continue
        columns = per_row(chunk.columns)
        if per_row is dict:
            arrow = _arrow_batch(columns)
        else:
            arrow = pa.RecordBatch.from_arrays([pa.array(v) for v in columns.values()], names=list(columns))
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
def _schema(firsts: list, sources: Sources):
    """One schema for every source's batches: their first batches' unified, every batch read once more only
    when a column is still all null there, and a column null throughout as float64. None when there are no rows."""
    pa = need("pyarrow", "export")
    firsts = [b for b in firsts if b is not None]
    if not firsts:
        return None
    schema = pa.unify_schemas([b.schema for b in firsts], promote_options="permissive")
    if any(pa.types.is_null(f.type) for f in schema):
        every = [b.schema for source in sources for b in source()]
        schema = pa.unify_schemas([schema, *every], promote_options="permissive")
    return pa.schema([f.with_type(pa.float64()) if pa.types.is_null(f.type) else f for f in schema])


def _conform(batch, schema):
    """``batch`` with ``schema``'s columns in its order: cast, and columns it lacks as nulls."""
    pa = need("pyarrow", "export")
    if batch.schema == schema:
        return batch
    names = batch.schema.names
    try:
        arrays = [batch.column(f.name).cast(f.type) if f.name in names else pa.nulls(batch.num_rows, f.type)
                  for f in schema]
    except (ValueError, TypeError, NotImplementedError, pa.ArrowInvalid) as exc:
        raise ExportError(f"a chunk does not fit the columns of the stream's first chunk ({exc})") from None
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


def _write(path: str, sources: Sources) -> bool:
    """Write the sources' batches to one Parquet file, a batch at a time; False (nothing written) when empty.

    Each source's pass is begun once: its first batch serves for the schema and is then written, not decoded
    again. Only the first batches wait together (as the schema needs them all); the rest come one at a time."""
    pq = need("pyarrow.parquet", "export")
    passes = [source() for source in sources]
    firsts = [next(rest, None) for rest in passes]
    schema = _schema(firsts, sources)
    if schema is None:
        return False
    makedirs(os.path.dirname(path))
    dictionary = _dictionary_columns(schema, firsts)
    with replacing(path) as tmp, pq.ParquetWriter(tmp, schema, use_dictionary=dictionary) as writer:
        for k, rest in enumerate(passes):
            if firsts[k] is not None:
                writer.write_batch(_conform(firsts[k], schema))
                firsts[k] = None  # written: let it go
            for batch in rest:
                writer.write_batch(_conform(batch, schema))
    return True


# --- reading it back: DuckDB ------------------------------------------------------------------------------
def is_dataset(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    return os.path.isfile(os.path.join(path, STATE)) or any(
        os.path.isdir(os.path.join(path, f"table={t}")) for t in TABLES)


def table(dataset: str | os.PathLike, name: str):
    """One table of the dataset as a ``pyarrow.dataset.Dataset`` with every column any of its files has.

    Runs differ in columns (a debug run has token texts, another run may not), and pyarrow, pandas and Dask
    take a dataset's columns from one file unless told otherwise; this gives them the union.
    """
    if name not in TABLES:
        raise AsyncLogError(f"a dataset's tables are {', '.join(TABLES)}, not {name!r}")
    need("pyarrow", "export")
    import pyarrow as pa
    import pyarrow.dataset as ds

    folder = os.path.join(os.fspath(dataset), f"table={name}")
    if not os.path.isdir(folder):
        raise AsyncLogError(f"{folder}: no such table in the dataset (export some runs first)")
    found = ds.dataset(folder, partitioning="hive")
    schemas = [fragment.physical_schema for fragment in found.get_fragments()]
    partitions = [found.partitioning.schema] if found.partitioning is not None else []  # runs: none
    schema = pa.unify_schemas([*schemas, *partitions], promote_options="permissive")
    return ds.dataset(folder, partitioning="hive", schema=schema)


def connect(dataset: str | os.PathLike):
    """A DuckDB connection with one view per table the dataset holds (``sequences``, ``runs``, ...)."""
    duckdb = need("duckdb", "query")
    con = duckdb.connect()
    for table in TABLES:
        folder = os.path.join(os.fspath(dataset), f"table={table}")
        if not any(name.endswith(".parquet") for _, _, names in os.walk(folder) for name in names):
            continue
        glob = os.path.join(folder, "**", "*.parquet").replace("'", "''")
        con.execute(f"create view {table} as select * exclude (\"table\") from read_parquet('{glob}', "
                    f"hive_partitioning=true, union_by_name=true)")
    return con


def cmd_query(args) -> int:
    """Run one SQL statement over a dataset that asynclog export DIR --dataset OUT wrote, with one view per
    table (runs, events, sequences, importance, tokens); print the result as a text table or CSV. Exit 0; 3 for
    a folder of logs rather than a dataset, or a statement DuckDB rejects; 4 when the folder does not exist."""
    from .cli import NOT_FOUND, USAGE

    if not os.path.isdir(args.dataset):
        print(f"asynclog query: {args.dataset}: no such folder", file=sys.stderr)
        return NOT_FOUND
    if not is_dataset(args.dataset):
        print(f"asynclog query: {args.dataset} is not a dataset; export its runs first: "
              f"asynclog export {args.dataset} --dataset OUT, then asynclog query OUT \"SELECT ...\"", file=sys.stderr)
        return USAGE
    duckdb = need("duckdb", "query")
    try:
        result = connect(args.dataset).sql(args.sql)
    except duckdb.Error as exc:
        print(f"asynclog query: {str(exc).splitlines()[0]}", file=sys.stderr)
        return USAGE
    if result is not None:
        _print(result.columns, result.fetchall(), args.csv)
    return 0


def _print(headers: list[str], rows: list[tuple], as_csv: bool) -> None:
    if as_csv:
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows(rows)
    else:
        from ._table import render

        print(render(list(headers), [list(r) for r in rows]))


def register(subparsers) -> None:
    """Add ``query`` to the console script's subcommands."""
    p = subparsers.add_parser("query", help="SQL (DuckDB) over a dataset written by asynclog export DIR --dataset",
                              description=cmd_query.__doc__)
    p.add_argument("dataset", help="the dataset's folder (OUT of asynclog export DIR --dataset OUT)")
    p.add_argument("sql", help='one statement, e.g. "SELECT checkpoint, count(*) FROM tokens GROUP BY 1"')
    p.add_argument("--csv", action="store_true", help="print CSV instead of a text table")
    p.set_defaults(func=cmd_query)
