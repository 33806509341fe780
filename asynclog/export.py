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

``register(subparsers)`` adds ``export``, ``query`` and ``plot`` to the ``asynclog`` console script; ``sequences`` and
``tokens`` are the DataFrame views behind ``Log.sequences`` and ``Log.tokens``.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import math
import os
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator

import msgspec

from .errors import AsyncLogError
from .files import makedirs, replacing
from .exits import CANNOT_ACCESS, DAMAGED, INCOMPLETE, NOT_FOUND, USAGE

__all__ = ["export", "sequences", "tokens", "register", "ExportError", "FORMATS", "STREAM_KINDS"]

FORMATS = ("parquet", "csv", "jsonl", "npz")
STREAM_KINDS = ("sequences", "tokens", "importance")
EVENT_BATCH = 4096
_EXT = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl", "npz": ".npz"}
_json = msgspec.json.Encoder()


class ExportError(AsyncLogError, ValueError):
    """What was asked cannot be exported (a format that does not hold it, a stream that is not there)."""


def need(module: str, extra: str):
    """Import an optional dependency, or an ImportError naming the extra that brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this needs {module.split('.')[0]}: pip install 'asynclog[{extra}]' "
                          f"(in a checkout: bash scripts/setup.sh --extras {extra})") from None


# --- values --------------------------------------------------------------------------------------------
def is_tensor(value) -> bool:
    return type(value).__name__ == "Tensor" and hasattr(value, "dtype")


def to_numpy(tensor):
    """A CPU numpy array of a tensor; dtypes numpy lacks (bfloat16, float8) become float32."""
    tensor = tensor.detach().cpu()
    try:
        return tensor.numpy()
    except TypeError:
        return tensor.float().numpy() if tensor.is_floating_point() else tensor.long().numpy()


def plain(value):
    """A value JSON can hold: tensors as lists, NaN and ±inf as strings, maps and lists walked."""
    if is_tensor(value):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def event_row(record: dict) -> dict:
    """A record as a row: ``type``, ``name``, ``time``, ``data`` as JSON text, and ``rank`` when the record
    came from a run folder of ranks (a column of its own, so queries need not parse ``data`` for it)."""
    rest = {k: v for k, v in record.items() if k not in ("type", "name", "time", "rank")}
    data = rest["data"] if rest.keys() == {"data"} else rest
    row = {"type": record.get("type"), "name": record.get("name"), "time": record.get("time"),
           "data": _json.encode(plain(data)).decode()}
    return row if "rank" not in record else {**row, "rank": record["rank"]}


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
            return (_arrow_batch(_columns([event_row(r) for r in group]))
                    for group in _groups(self.log.events(), EVENT_BATCH))
        if self.what == "tensors":
            return (_tensor_batch(*tensor) for tensor in _tensors(self.log))
        return (_arrow_batch(_with_rank(chunk)) for chunk in self.log.stream(self.what))


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


def _groups(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while group := list(itertools.islice(it, size)):
        yield group


def _columns(rows: list[dict]) -> dict:
    return {key: [row[key] for row in rows] for key in rows[0]}


def _with_rank(chunk) -> dict:
    """A chunk's columns, and its ``rank`` (``ShardedLog.stream`` sets it) as one more column."""
    rank = getattr(chunk, "rank", None)
    return chunk.columns if rank is None else {**chunk.columns, "rank": [rank] * chunk.rows}


def shards_of(log) -> list[tuple[int | None, object]]:
    """``(rank, Log)`` for each shard of a run folder of ranks; ``[(None, log)]`` for one file."""
    return sorted(log.shards.items()) if hasattr(log, "shards") else [(None, log)]


def _tensors(log) -> Iterator[tuple[str, int, object, int | None]]:
    """Each tensor as ``(name, occurrence, tensor, rank)``, rank by rank."""
    for rank, shard in shards_of(log):
        for name in shard.tensor_names():
            for k in range(shard.tensor_count(name)):
                yield name, k, shard.tensor(name, k), rank


# --- Arrow ----------------------------------------------------------------------------------------------
def _arrow_column(values: list):
    pa = need("pyarrow", "export")
    import numpy as np

    if not values or not all(is_tensor(v) for v in values):
        return pa.array(values)
    arrays = [to_numpy(v) for v in values]
    if all(a.ndim == 0 for a in arrays):
        return pa.array(np.stack(arrays))
    flat = [a.reshape(-1) for a in arrays]
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in flat])])
    list_type = pa.LargeListArray if offsets[-1] >= 2**31 else pa.ListArray
    return list_type.from_arrays(pa.array(offsets), pa.array(np.concatenate(flat)))


def _arrow_batch(columns: dict):
    """Columns as one Arrow batch: a numpy array as it is, a list of values through ``_arrow_column``;
    ExportError naming a column Arrow cannot hold as one type (numbers and text mixed)."""
    import numpy as np

    pa = need("pyarrow", "export")
    arrays = {}
    for name, values in columns.items():
        try:
            arrays[name] = pa.array(values) if isinstance(values, np.ndarray) else _arrow_column(list(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ExportError(f"column {name!r}: {str(exc).splitlines()[0]}") from None
    return pa.RecordBatch.from_pydict(arrays)


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
        first = _arrow_batch({})
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
    from .reader import open_log

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


# --- table views ----------------------------------------------------------------------------------------
def _stream_of(log, kind: str, batch: str) -> str:
    name = f"{kind}/{batch}"
    if name not in log.stream_names():
        raise KeyError(f"no stream {name!r} in {log.path}; it has: {', '.join(log.stream_names()) or 'none'}")
    return name


def sequences(log, batch: str = "E_batch"):
    """``sequences/<batch>`` as a pandas DataFrame, one row per sequence (``Log.sequences``)."""
    need("pandas", "pandas")
    return log.to_pandas(_stream_of(log, "sequences", batch))


def tokens(log, batch: str = "E_batch"):
    """``tokens/<batch>`` as a pandas DataFrame, one row per token: ``sequence_id``, ``position`` (within the
    row) and each per-token column (``tokens``, ``attention_mask``, ``token_texts``, ``token_logprobs``,
    ``rb_entropies``) as a plain column (``Log.tokens``). A per-token column shorter than the row's tokens is
    aligned to its last tokens, NaN (None for text) before (``_per_token``)."""
    pd = need("pandas", "pandas")
    frames = [pd.DataFrame(_per_token(chunk.columns)) for chunk in log.stream(_stream_of(log, "tokens", batch))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _per_token(columns: dict) -> dict:
    """A tokens chunk's columns as one row per token: a per-sequence column (a value per row) repeated for each
    of the row's tokens, a per-token column (a list or 1-d tensor per row) laid out back to back, and
    ``position`` within the row beside ``sequence_id``.

    A row's tokens are as many as its ``tokens`` has (as its longest per-token column without one). A
    per-token column with fewer values in a row is aligned to the row's last tokens, and the first positions
    are null (a masked array): log-probabilities of L - 1 tokens score tokens 1 .. L - 1, as a causal LM
    gives them, and values of the response only score the tokens after the prompt. ExportError for what no
    table of one row per token holds: a column with more values than the row has tokens, rows of more than
    one dimension, numbers and text mixed in one column.
    """
    import numpy as np

    ragged = [n for n, v in columns.items() if v and _per_token_values(v[0])]
    if not ragged:
        return dict(columns)
    sizes = {name: np.array([_row_length(name, v) for v in columns[name]], dtype=np.int64) for name in ragged}
    lengths = sizes["tokens"] if "tokens" in sizes else np.max(list(sizes.values()), axis=0)
    out = {}
    for name, values in columns.items():
        if name not in ragged:
            out[name] = np.repeat(_per_sequence(name, values), lengths)
            if name == "sequence_id":
                starts = np.cumsum(lengths) - lengths
                out["position"] = np.arange(lengths.sum()) - np.repeat(starts, lengths)
        elif np.array_equal(sizes[name], lengths):
            out[name] = _flat(values)
        else:
            out[name] = _aligned_to_the_end(name, values, sizes[name], lengths)
    return out


def _per_token_values(value) -> bool:
    return isinstance(value, list) or (is_tensor(value) and value.dim() > 0)


def _row_length(name: str, value) -> int:
    if is_tensor(value) and value.dim() > 1:
        raise ExportError(f"column {name!r} has rows of shape {tuple(value.shape)}: a table of one row per "
                          "token holds one value per token")
    return len(value)


def _per_sequence(name: str, values: list):
    """A column of one value per row as a numpy array; numbers and text mixed would all become text."""
    import numpy as np

    array = np.asarray([v.item() if is_tensor(v) else v for v in values])
    if array.dtype.kind == "U" and not all(isinstance(v, str) for v in values):
        raise ExportError(f"column {name!r} mixes text and other values in one chunk")
    return array


def _aligned_to_the_end(name: str, values: list, sizes, lengths):
    """A per-token column with fewer values than some rows have tokens, each row's values at its last
    positions and the others masked (null)."""
    import numpy as np

    if (sizes > lengths).any():
        row = int(np.argmax(sizes > lengths))
        raise ExportError(f"column {name!r} has {sizes[row]} values in a row of {lengths[row]} tokens")
    flat = _flat(values)
    starts = np.cumsum(lengths) - lengths + (lengths - sizes)  # where each row's values begin
    where = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(sizes.sum())
    data = np.zeros(int(lengths.sum()), dtype=flat.dtype) if flat.dtype != object else np.full(
        int(lengths.sum()), None, dtype=object)
    mask = np.ones(len(data), dtype=bool)
    data[where], mask[where] = flat, False
    return np.ma.masked_array(data, mask=mask)


def _flat(values: list):
    """A ragged column's rows back to back as one numpy array, each row flattened. Tensor rows are joined
    by torch in one call and converted once: per row, the conversion cost more than the copy."""
    import numpy as np

    if values and all(is_tensor(v) for v in values):
        import torch

        try:  # rows of one trailing shape join as they are: flattened whole, the same values in the same order
            joined = torch.cat(values)
        except RuntimeError:  # 0-d rows, or trailing shapes that differ
            joined = torch.cat([v.reshape(-1) for v in values])
        return to_numpy(joined.reshape(-1))
    parts = [to_numpy(v).reshape(-1) if is_tensor(v) else np.asarray(v, dtype=object) for v in values]
    return np.concatenate(parts) if parts else []


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

    With --dataset OUT: OUT, a hive-partitioned Parquet dataset, is made to hold the runs below RUN (a folder):
    new and changed runs are written, unchanged ones skipped, moved ones kept, and the runs it held from below
    RUN that RUN no longer holds removed (docs/DATASET.md). A run no table can hold is skipped, named on stderr
    with why, and the others are exported: exit 1 then."""
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
    """Add ``export``, ``query`` and ``plot`` to the console script's subcommands."""
    p = subparsers.add_parser("export", help="write a run's events, streams or tensors as parquet, csv, jsonl or npz",
                              description=cmd_export.__doc__)
    p.add_argument("run", help="the run's .alog file or run folder of ranks (with --dataset: also a folder of runs)")
    into = p.add_mutually_exclusive_group(required=True)
    into.add_argument("--to", choices=FORMATS, help="output format")
    into.add_argument("--dataset", metavar="OUT", default=None,
                      help="add every run below RUN to the Parquet dataset in folder OUT (query it with asynclog query)")
    p.add_argument("--what", default=None,
                   help="events (default), tensors (default for npz), a stream kind (sequences, tokens, importance) "
                        "or one stream's name (tokens/E_batch)")
    p.add_argument("-o", "--out", default=None,
                   help="output folder (default: the run's folder), or a file name when one table is written")
    p.set_defaults(func=cmd_export)
    from .dataset import register as register_query
    from .plots import register as register_plot

    register_query(subparsers)

    register_plot(subparsers)
