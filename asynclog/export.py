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
DataFrame views behind ``Log.sequences`` and ``Log.tokens``, live in ``asynclog.tables`` (named here too).
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import os
import sys
import zipfile
from collections.abc import Callable, Iterator

import msgspec

from .errors import AsyncLogError, ExportError
from .exits import CANNOT_ACCESS, DAMAGED, INCOMPLETE, NOT_FOUND, USAGE
from .files import makedirs, replacing
from .tables import (EVENT_BATCH, STREAM_KINDS, arrow_batch, event_row, groups, need, plain, sequences, shards_of,
                     to_numpy, tokens)

__all__ = ["export", "sequences", "tokens", "register", "ExportError", "FORMATS", "STREAM_KINDS"]

FORMATS = ("parquet", "csv", "jsonl", "npz")
DASHBOARDS = ("tensorboard", "wandb")  # written by asynclog/tensorboard.py and asynclog/wandb.py
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
    from .shards import open_log

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


# --- the console script ---------------------------------------------------------------------------------
def command(name: str, target: str, write: Callable[[], list[str]], mistakes: tuple = ()) -> int:
    """Run one subcommand that writes files: print each path written and return 0, or print one line on
    stderr (what, which file) and return the CLI's exit code for it (``asynclog --help`` lists them)."""

    try:
        paths = write()
    except (*mistakes, ImportError, KeyError) as exc:
        print(f"asynclog {name}: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return USAGE
    except (AsyncLogError, OSError) as exc:
        print(f"asynclog {name}: {target}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return NOT_FOUND if isinstance(exc, FileNotFoundError) else CANNOT_ACCESS
    for path in paths:
        print(path)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Exit 0 when every file was written (their paths on stdout); otherwise one line on stderr and the CLI's
    exit code (3 a mistake in the arguments, 4 no such run, 5 cannot read or write). A run that was not
    closed normally (for a run folder of ranks: any rank's shard) is exported as far as it goes, and then
    named on stderr with why: exit 2 when it is incomplete, 1 when a shard is missing or damaged.

    --to tensorboard and --to wandb take a run or a folder of runs (one dashboard run per folder of them) and
    write into -o FOLDER; the folders written are printed.

    With --dataset OUT: OUT, a hive-partitioned Parquet dataset, is made to hold the runs below RUN (a folder):
    new and changed runs are written, unchanged ones skipped, moved ones kept, and the runs it held from below
    RUN that RUN no longer holds removed (docs/DATASET.md). A run no table can hold is skipped, named on stderr
    with why, and the others are exported: exit 1 then."""
    if args.to in DASHBOARDS:
        return _to_dashboard(args)
    if args.dataset is None:
        done = command("export", args.run, lambda: export(args.run, args.to, args.what, args.out), (ExportError,))
        return done or _unfinished(args.run)
    if args.what or args.out:
        print("asynclog export: --dataset writes every table into its folder; --what and -o go with --to",
              file=sys.stderr)

        return USAGE
    from .dataset import export_dataset

    done = []
    status = command("export", args.run, lambda: done.append(export_dataset(args.run, args.dataset)) or done[0],
                     (ExportError,))
    return status or (DAMAGED if done[0].skipped else 0)


def _to_dashboard(args: argparse.Namespace) -> int:
    """``--to tensorboard`` and ``--to wandb``: every table at once, into the folder -o names."""
    if args.what or not args.out:
        print(f"asynclog export: --to {args.to} writes each checkpoint's scalars, histograms and sequences: give "
              f"-o FOLDER, and no --what", file=sys.stderr)
        return USAGE
    if args.to == "tensorboard":
        from .tensorboard import export_tensorboard as write
    else:
        from .wandb import export_wandb as write
    return command("export", args.run, lambda: write(args.run, args.out), (ExportError,))


def _unfinished(path: str) -> int:
    """0 for a run closed normally; else one line on stderr naming what is not (each rank of a run folder
    that is not, as ``asynclog ls`` says it) and the exit status ``verify`` gives such a run."""
    from .analysis import read_run

    facts = read_run(path)
    if facts.status == "complete":
        return 0
    print(f"asynclog export: {path}: {facts.status}, exported as far as it goes: {facts.reason}", file=sys.stderr)
    return DAMAGED if facts.status == "damaged" else INCOMPLETE


def register(subparsers) -> None:
    """Add ``export`` to the console script's subcommands."""
    p = subparsers.add_parser("export", help="write a run's events, streams or tensors as parquet, csv, jsonl or npz",
                              description=cmd_export.__doc__)
    p.add_argument("run", help="the run's .alog file or run folder of ranks (with --dataset: also a folder of runs)")
    into = p.add_mutually_exclusive_group(required=True)
    into.add_argument("--to", choices=FORMATS + DASHBOARDS,
                      help="output format; tensorboard and wandb take a run or a folder of runs (docs/DATASET.md)")
    into.add_argument("--dataset", metavar="OUT", default=None,
                      help="add every run below RUN to the Parquet dataset in folder OUT (query it with asynclog query)")
    p.add_argument("--what", default=None,
                   help="events (default), tensors (default for npz), a stream kind (sequences, tokens, importance) "
                        "or one stream's name (tokens/E_batch)")
    p.add_argument("-o", "--out", default=None,
                   help="output folder (default: the run's folder), or a file name when one table is written")
    p.set_defaults(func=cmd_export)
