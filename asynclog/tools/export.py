"""Exports and table views: a run's events, streams and tensors as Parquet, CSV, JSON lines or npz.

``asynclog export RUN --to parquet|csv|jsonl|npz [--what WHAT] [-o OUT]``; ``WHAT`` is ``events``,
``tensors``, a stream kind (``sequences``, ``tokens``, ``importance``: every batch of it, one file each) or
one stream's name (``tokens/E_batch``). Files are named ``<run>_<what>.<ext>`` in ``OUT`` (a folder, the
run's own by default), or ``OUT`` itself when it names a file and one table is written.

What each table holds:

- events: one row per record, ``type``, ``name``, ``time`` and ``data`` as JSON text (DuckDB: ``data->>'x'``).
- a stream: one row per stream row, its columns as they are; a tensor column becomes a list column of its
  dtype (a row's tensor flattened; bfloat16 and float8 as float32), a column of 0-d tensors a plain column.
- tensors (parquet): one row per tensor logged, ``name``, ``occurrence``, ``dtype``, ``shape`` and
  ``values`` (flattened, as float64). npz holds each tensor exactly (bfloat16/float8 as float32), keyed by
  its name (``name#k`` for the k-th repeat of a name logged more than once).

A run folder of ranks (``shards.py``) exports as one run: every table gets a ``rank`` column (events,
stream rows, tensors), rows rank by rank (events in time order); npz keys are ``rank-NNNNN/<name>``. A run
not closed normally, or a folder with a rank's shard incomplete or missing, exports what is there; the
console script then names it on stderr and exits as ``verify`` would (2 incomplete, 1 damaged).

In JSON (events' ``data``, jsonl, CSV cells holding lists) NaN and ±inf are the strings "NaN", "Infinity",
"-Infinity": JSON has no such numbers, and null would hide them.

Memory: a stream is read and written one chunk at a time (one Parquet row group per chunk), events 4096
records at a time, tensors one at a time; a file appears under its name only when it is whole.

``export DIR --dataset OUT`` writes many runs as one Parquet dataset instead (``dataset.py``).

``register(subparsers)`` adds ``export`` to the ``asynclog`` console script. ``sequences`` and ``tokens``, the
DataFrame views behind ``Log.sequences`` and ``Log.tokens``, live in ``asynclog._tables`` (named here too).
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import zipfile
from collections.abc import Callable, Iterator

import msgspec

from asynclog._files import makedirs, replacing
from asynclog._tables import (EVENT_BATCH, STREAM_KINDS, arrow_batch, event_row, groups, need, plain, sequences,
                              shards_of, to_numpy, tokens)
from asynclog.errors import ExportError

__all__ = ["export", "sequences", "tokens", "ExportError", "FORMATS", "STREAM_KINDS"]

FORMATS = ("parquet", "csv", "jsonl", "npz")
_EXT = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl", "npz": ".npz"}
_json = msgspec.json.Encoder()


# --- what to export -------------------------------------------------------------------------------------
class Table:
    """One table of a run: its label (for file names) and how to read its rows or Arrow batches."""

    def __init__(self, log, what: str):
        self.log, self.what = log, what

    @property
    def label(self) -> str:
        return self.what.replace("/", "_")

    def rows(self) -> Iterator[dict]:
        if self.what == "events":
            return (event_row(r) for r in self.log.events())
        return self.log.rows(self.what)

    def batches(self) -> Iterator:
        if self.what == "events":
            return (arrow_batch(_columns([event_row(r) for r in group]))
                    for group in groups(self.log.events(), EVENT_BATCH))
        if self.what == "tensors":
            return (_tensor_batch(*tensor) for tensor in _tensors(self.log))
        return (arrow_batch(_with_rank(chunk)) for chunk in self.log.stream(self.what))


def tables(log, what: str, to: str) -> list[Table]:
    if to == "npz" and what != "tensors":
        raise ExportError(f"npz holds tensors only (--what tensors), not {what!r}")
    if what == "tensors" and to in ("csv", "jsonl"):
        raise ExportError(f"tensors export to parquet or npz, not {to}")
    if what in ("events", "tensors"):
        return [Table(log, what)]
    names = log.stream_names()
    chosen = [n for n in names if n == what or n.startswith(what + "/")] if what else []
    if not chosen:
        raise ExportError(f"{log.path} has no stream {what!r}; it has: events, tensors, "
                          + (", ".join(names) or "no streams"))
    return [Table(log, name) for name in chosen]


def _columns(rows: list[dict]) -> dict:
    return {key: [row[key] for row in rows] for key in rows[0]}


def _with_rank(chunk) -> dict:
    """A chunk's columns, and its ``rank`` (``ShardedLog.stream`` sets it) as one more column."""
    rank = getattr(chunk, "rank", None)
    return chunk.columns if rank is None else {**chunk.columns, "rank": [rank] * chunk.rows}


def _tensors(log) -> Iterator[tuple[str, int, object, int | None]]:
    """Each tensor as ``(name, occurrence, tensor, rank)``, rank by rank."""
    for rank, shard in shards_of(log):
        for name in shard.tensor_names():
            for k in range(shard.tensor_count(name)):
                yield name, k, shard.tensor(name, k), rank


# --- Arrow ----------------------------------------------------------------------------------------------
def _tensor_batch(name: str, occurrence: int, tensor, rank: int | None = None):
    pa = need("pyarrow", "export")
    values = to_numpy(tensor).reshape(-1).astype("float64")
    columns = {
        "name": [name], "occurrence": [occurrence], "dtype": [str(tensor.dtype).removeprefix("torch.")],
        "shape": pa.array([list(tensor.shape)], pa.list_(pa.int64())),
        "values": pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), pa.array(values))}
    return pa.RecordBatch.from_pydict(columns if rank is None else {**columns, "rank": [rank]})


def _schema(first, rest: Callable[[], Iterator]):
    """The schema to write: the first batch's, unless a column is all null there; then every batch is read
    once to find its type (a Parquet file has one schema, fixed when it is opened)."""
    pa = need("pyarrow", "export")
    if not any(pa.types.is_null(f.type) for f in first.schema):
        return first.schema
    return pa.unify_schemas([first.schema, *(b.schema for b in rest())], promote_options="permissive")


def write_parquet(table: Table, path: str) -> None:
    pq = need("pyarrow.parquet", "export")
    batches = table.batches()
    first = next(batches, None)
    if first is None:
        first = arrow_batch({})
    schema = _schema(first, lambda: itertools.islice(table.batches(), 1, None))
    with replacing(path) as f, pq.ParquetWriter(f, schema) as writer:
        for k, batch in enumerate(itertools.chain([first], batches)):
            if batch.schema != schema:
                try:
                    batch = batch.cast(schema)
                except (ValueError, TypeError, NotImplementedError) as exc:
                    raise ExportError(f"{table.what}: batch {k} does not fit the columns of the first ({exc})") from None
            writer.write_batch(batch)


# --- text and npz ---------------------------------------------------------------------------------------
def write_jsonl(table: Table, path: str) -> None:
    with replacing(path) as f:
        for row in table.rows():
            f.write(_json.encode(plain(row)) + b"\n")


def _csv_cell(value):
    if value is None or isinstance(value, (str, int, float)):
        return value
    return _json.encode(plain(value)).decode()


def write_csv(table: Table, path: str) -> None:
    with replacing(path) as f:
        text, writer = io.TextIOWrapper(f, encoding="utf-8", newline=""), None
        for row in table.rows():
            if writer is None:
                writer = csv.DictWriter(text, fieldnames=list(row), restval="")
                writer.writeheader()
            writer.writerow({k: _csv_cell(v) for k, v in row.items()})
        text.flush()
        text.detach()  # the file is replacing's to close


def write_npz(table: Table, path: str) -> None:
    import numpy as np

    shards = dict(shards_of(table.log))
    with replacing(path) as f, zipfile.ZipFile(f, "w", allowZip64=True) as npz:
        for name, k, tensor, rank in _tensors(table.log):
            key = name if shards[rank].tensor_count(name) == 1 else f"{name}#{k}"
            key = key if rank is None else f"rank-{rank:05d}/{key}"
            with npz.open(key + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, to_numpy(tensor), allow_pickle=False)


_WRITERS = {"parquet": write_parquet, "csv": write_csv, "jsonl": write_jsonl, "npz": write_npz}


def export(path: str | os.PathLike, to: str, what: str | None = None, out: str | os.PathLike | None = None) -> list[str]:
    """Export a run (see the module docstring); return the paths written."""
    from asynclog._shards import open_log

    if to not in FORMATS:
        raise ExportError(f"unknown format {to!r}; choose one of {', '.join(FORMATS)}")
    what = what or ("tensors" if to == "npz" else "events")
    with open_log(path) as log:
        chosen = tables(log, what, to)
        targets = _targets(os.fspath(path), chosen, to, out)
        for table, target in zip(chosen, targets):
            _WRITERS[to](table, target)
    return targets


def _targets(path: str, chosen: list[Table], to: str, out) -> list[str]:
    out = os.fspath(out) if out is not None else None
    if out and len(chosen) == 1 and not os.path.isdir(out) and os.path.splitext(out)[1]:
        return [out]
    folder = out or os.path.dirname(os.path.abspath(path))
    makedirs(folder)
    stem = os.path.splitext(os.path.basename(path.rstrip(os.sep)))[0]
    return [os.path.join(folder, f"{stem}_{t.label}{_EXT[to]}") for t in chosen]
