"""Stream: a chunked, columnar table (per-sequence or per-token rows) that never holds more than one chunk.

``append(**row)`` copies the row's values into per-column buffers; when ``chunk_rows`` rows are buffered the
chunk is packed into one body, copied into the staging pool, handed to the writer, and forgotten. A chunk
also ships early when the next row would make its body larger than the staging pool's largest piece; a
single row larger than that is refused.

Columns are fixed by the first accepted row. A column is either
- ``tensor``: every value is a torch tensor or numpy array of one dtype; rows may differ in shape (ragged
  token rows). The chunk stores the bytes of all rows back to back and each row's shape.
- ``object``: any other msgpack-able value (numbers, str, None, lists, dicts with str keys); stored as a
  msgpack array.

A stream may also name ``lookups`` (``format.Lookup``): columns its chunks do not store, which the reader
makes from a stored column by looking each value up in another stream of the run (token texts from token
ids through a table holding each id's text once). Every chunk's meta names them.

The chunk body is the columns' segments back to back; the frame meta says where each one is (docs/FORMAT.md).
CUDA tensor values are kept on the device until the chunk ships; then they are gathered on the device,
copied to the host once per chunk, and put back between the CPU rows in row order.

Thread safety: one Stream may be shared by threads. Every call holds the stream's lock from its first
check to its last byte, so rows are never interleaved or torn, and a row either lands in a chunk exactly
once or its call raises. A refused call (LogInputError) checks everything before it buffers anything:
it leaves the stream as it was.
"""

from __future__ import annotations

import itertools
import numbers
import sys
import threading
import time
from typing import Any

from asynclog._format import Lookup, msgpack_array
from asynclog._records import encode_value
from asynclog._snapshot import dtype_name, host_bytes
from asynclog.errors import ClosedError, LogInputError

__all__ = ["Stream", "MutedStream"]

_ARRAY_HEADER = 5  # bytes msgpack_array puts before an object column's values


class _TensorColumn:
    """Rows of one dtype: their bytes in row order, shapes beside them.

    CPU rows are copied into ``host`` as they arrive. A CUDA row stays on its device; it closes the current
    ``host`` run, and both go to ``parts`` in row order, which ``pack`` follows.
    """

    kind = "tensor"

    def __init__(self, name: str, dtype):
        self.name, self.dtype = name, dtype
        torch = sys.modules.get("torch")
        self.tensor_type = torch.Tensor if torch is not None else None
        self.host = bytearray()  # CPU rows since the last CUDA part, back to back
        self.parts: list = []  # earlier host runs and CUDA parts, in row order
        self.shapes: list = []

    def prepare(self, value: Any):
        """Check a row value and return what ``add`` stores (with its ``nbytes``); raises before anything is buffered.

        The common case, a CPU tensor of the column's dtype, costs one ``numpy()`` view; the copy happens
        in ``add``. Everything else (grad, CUDA, numpy input, odd dtypes) takes the checked slow path.
        """
        if type(value) is self.tensor_type and value.dtype is self.dtype:
            try:
                return value.numpy()
            except (TypeError, RuntimeError):
                pass
        return self._prepare_slow(value)

    def _prepare_slow(self, value: Any):
        if _dtype_of(value) != self.dtype:
            raise LogInputError(f"column {self.name!r} holds {self.dtype}, got {_describe(value)}")
        if isinstance(value, _ndarray()):
            return value
        if value.layout is not _strided() or value.device.type == "meta":
            raise LogInputError(f"column {self.name!r}: {value.layout} tensors on {value.device} cannot be logged")
        if value.is_cuda:
            return _Held(value.detach().clone(), value.shape)
        return _Held(host_bytes(value), value.shape)

    def add(self, value: Any) -> None:
        self.shapes.append(value.shape)
        if type(value) is _Held:
            self._add_bytes(value.data)
            return
        try:
            self.host.extend(value)  # C-contiguous arrays export their bytes directly
        except TypeError:
            self.host.extend(value.tobytes())

    def _add_bytes(self, data) -> None:
        if type(data) is memoryview:
            self.host.extend(data)
            return
        if self.host:
            self.parts.append(self.host)
            self.host = bytearray()
        self.parts.append(data)

    def prepare_many(self, values: Any, batch: "_Batch"):
        """Check a batch column; return it (detached) and each row's byte size."""
        if _dtype_of(values) != self.dtype:
            raise LogInputError(f"column {self.name!r} holds {self.dtype}, got {_describe(values)}")
        if len(values.shape) == 0 or values.shape[0] != batch.rows:
            raise LogInputError(f"column {self.name!r} has {tuple(values.shape)[:1]} rows, expected {batch.rows}")
        if not isinstance(values, _ndarray()) and values.layout is not _strided():
            raise LogInputError(f"column {self.name!r}: {values.layout} tensors cannot be logged")
        return (values.detach() if hasattr(values, "detach") else values), self._row_sizes(values, batch)

    def _row_sizes(self, values: Any, batch: "_Batch") -> list[int]:
        """Each row's bytes once its lengths are applied; refuses lengths wider than the padded rows."""
        shape = list(values.shape)
        itemsize = values.itemsize if isinstance(values, _ndarray()) else values.element_size()
        if batch.lengths is None or len(shape) < 2:
            return [_numel(shape[1:]) * itemsize] * batch.rows
        if batch.lengths and max(batch.lengths) > shape[1]:
            raise LogInputError(f"lengths must be at most the padded width {shape[1]} of column {self.name!r}, "
                                f"got {max(batch.lengths)}")
        entry = _numel(shape[2:]) * itemsize
        return [n * entry for n in batch.lengths]

    def add_many(self, values: Any, batch: "_Batch", lo: int, hi: int) -> None:
        rows = values[lo:hi]
        row_shape = list(rows.shape[1:])
        if batch.lengths is not None and len(row_shape) >= 1:
            kept = batch.lengths[lo:hi]
            rows = rows[_keep_mask(rows, kept)]  # row-major order: row i's first kept[i] entries
            self.shapes.extend([k, *row_shape[1:]] for k in kept)
        else:
            self.shapes.extend([row_shape] * (hi - lo))
        if getattr(rows, "is_cuda", False):
            self._add_bytes(rows.contiguous())
        elif isinstance(rows, _ndarray()):
            self.host.extend(rows.tobytes())
        else:
            self.host.extend(host_bytes(rows))

    def pack(self) -> tuple[dict, bytes]:
        data = _in_row_order([*self.parts, self.host]) if self.parts else self.host
        meta = {"name": self.name, "kind": "tensor", "dtype": dtype_name(self.dtype),
                "shapes": [list(shape) for shape in self.shapes]}
        self.host, self.parts, self.shapes = bytearray(), [], []
        return meta, data


class _ObjectColumn:
    """Plain values, each encoded with msgspec as it arrives (so bad values fail at the call site)."""

    kind = "object"

    def __init__(self, name: str):
        self.name = name
        self.parts: list[bytes] = []

    def prepare(self, value: Any) -> bytes:
        if type(value) in _SCALARS:
            try:
                return _encode_scalar(value)
            except (OverflowError, UnicodeEncodeError) as exc:  # an int beyond 64 bits, a lone surrogate
                raise LogInputError(f"column {self.name!r}: {exc}") from None
        if _dtype_of(value) is not None:
            raise LogInputError(f"column {self.name!r} holds plain values, got {_describe(value)}")
        return encode_value(value, f"column {self.name!r}")

    def add(self, encoded: bytes) -> None:
        self.parts.append(encoded)

    def prepare_many(self, values: Any, batch: "_Batch") -> tuple[list[bytes], list[int]]:
        """Encode a batch column; return the encoded values and each row's byte size."""
        if _dtype_of(values) is not None or len(values) != batch.rows:
            raise LogInputError(f"column {self.name!r} needs a list of {batch.rows} plain values")
        encoded = None
        if type(values) is list and _SCALARS.issuperset(map(type, values)):  # ids, scores: one C loop
            try:
                encoded = list(map(_encode_scalar, values))
            except (OverflowError, UnicodeEncodeError):
                pass  # the loop below names the value
        if encoded is None:
            encoded = [self.prepare(value) for value in values]
        return encoded, list(map(len, encoded))

    def add_many(self, encoded: list[bytes], batch: "_Batch", lo: int, hi: int) -> None:
        self.parts.extend(encoded[lo:hi])

    def pack(self) -> tuple[dict, bytes]:
        data = msgpack_array(self.parts)
        self.parts = []
        return {"name": self.name, "kind": "object"}, data


class Stream:
    """Made by ``Run.stream``; ``append`` rows, ``flush`` a partial chunk, ``close`` when done (optional).

    Safe to share between threads (see the module docstring).
    """

    def __init__(self, sink, name: str, chunk_rows: int, lookups=None):
        """``sink`` is what the stream knows of its run: ``stopped``, ``check_open()``, ``largest_chunk()``,
        ``ship(meta, body)`` and ``spent(ns)`` (see ``run._ChunkSink``). ``lookups``: maps with the fields of
        ``format.Lookup`` (see the module docstring)."""
        if not isinstance(chunk_rows, int) or chunk_rows <= 0:
            raise LogInputError(f"chunk_rows must be a positive int, not {chunk_rows!r}")
        self._sink = sink
        self.name, self.chunk_rows = name, chunk_rows
        self.lookups = _checked_lookups(lookups)
        self.columns: dict[str, _TensorColumn | _ObjectColumn] | None = None
        self.rows = 0
        self.chunks = 0
        self._nbytes = 0  # body bytes buffered (object columns' array headers not counted)
        self._room = 0  # the most body bytes a chunk may buffer, set with the columns
        self._closed = False
        self._lock = threading.Lock()

    def append(self, **row: Any) -> None:
        """Buffer one row; ship the chunk when it is full. Values are copied: the caller may reuse them."""
        start = time.perf_counter_ns()
        self._lock.acquire()  # not `with`: acquire/release is about 100 ns cheaper per row here
        try:
            if (self._closed or self._sink.stopped) and not self._check_open():
                return
            columns = self.columns or self._new_columns(row)
            if len(row) != len(columns):
                raise self._wrong_columns(columns, row)
            # Check every value before buffering any, so a refused row leaves the stream unchanged.
            prepared, nbytes = [], 0
            try:
                for name, column in columns.items():
                    value = column.prepare(row[name])
                    prepared.append(value)
                    nbytes += len(value) if type(value) is bytes else value.nbytes
            except KeyError:
                raise self._wrong_columns(columns, row) from None
            if self.columns is None or nbytes > self._room:
                self._accept(columns, nbytes, "a row")
            if self._nbytes + nbytes > self._room:
                self._ship()  # early, so the chunk stays within one staging piece
            for column, value in zip(columns.values(), prepared):
                column.add(value)
            self.rows += 1
            self._nbytes += nbytes
            if self.rows >= self.chunk_rows:
                self._ship()
            self._sink.spent(time.perf_counter_ns() - start)
        finally:
            self._lock.release()

    def extend(self, lengths=None, **columns: Any) -> None:
        """Append many rows at once, the fast path for batch data: one copy per column per chunk.

        Each tensor (or numpy array) column's first dimension indexes rows; a list column holds one plain
        value per row. With ``lengths`` (one int per row, 0 <= length <= the padded width), tensor columns of
        two or more dimensions keep only the first ``lengths[i]`` entries of row i: ragged token rows straight
        from a padded [N, T] batch. Everything is checked before any row is buffered.
        """
        start = time.perf_counter_ns()
        with self._lock:
            if not self._check_open():
                return
            batch = _Batch(columns, lengths)
            own = self.columns or self._new_columns(columns)
            if columns.keys() != own.keys():
                raise LogInputError(f"stream {self.name!r} has columns {sorted(own)}, got {sorted(columns)}")
            prepared, sizes = {}, [0] * batch.rows
            for name, column in own.items():
                prepared[name], column_sizes = column.prepare_many(columns[name], batch)
                sizes = [a + b for a, b in zip(sizes, column_sizes)]
            biggest = max(sizes, default=0)
            self._accept(own, biggest, f"row {sizes.index(biggest) if sizes else 0}")
            self._buffer_batch(batch, prepared, sizes)
            self._sink.spent(time.perf_counter_ns() - start)

    def _buffer_batch(self, batch: "_Batch", prepared: dict, sizes: list[int]) -> None:
        at = 0
        while at < batch.rows:
            take = self._fit(sizes, at)
            for name, column in self.columns.items() if take else ():
                column.add_many(prepared[name], batch, at, at + take)
            self.rows += take
            self._nbytes += sum(sizes[at : at + take])
            at += take
            if self.rows >= self.chunk_rows or at < batch.rows:  # full by rows or by bytes
                self._ship()

    def _fit(self, sizes: list[int], at: int) -> int:
        """How many rows from ``at`` fit in the chunk being buffered."""
        budget, take = self._room - self._nbytes, 0
        for size in itertools.islice(sizes, at, at + self.chunk_rows - self.rows):
            if size > budget:
                break
            budget -= size
            take += 1
        return take

    def _wrong_columns(self, columns: dict, row: dict) -> LogInputError:
        return LogInputError(f"stream {self.name!r} has columns {sorted(columns)}, row has {sorted(row)}")

    def _check_open(self) -> bool:
        """Raise ClosedError or the run's failure; False when the run was muted (rows then go nowhere)."""
        if self._closed:
            raise ClosedError(f"stream {self.name!r} is closed")
        return self._sink.check_open()

    def _new_columns(self, sample: dict) -> dict:
        """Columns for a first row or batch; they become the stream's only once the call is accepted."""
        if not sample:
            raise LogInputError("a stream row needs at least one column")
        for lookup in self.lookups:
            if lookup["column"] in sample:
                raise LogInputError(f"stream {self.name!r}: lookup column {lookup['column']!r} is a stored column")
            if lookup["keys"] not in sample:
                raise LogInputError(f"stream {self.name!r}: lookup keys {lookup['keys']!r} is not a column")
        return {name: _new_column(name, value) for name, value in sample.items()}

    def _accept(self, columns: dict, nbytes: int, what: str) -> None:
        """Refuse a row no chunk can hold; make new columns the stream's (the call is accepted from here on)."""
        room = self._room
        if self.columns is None:
            objects = sum(column.kind == "object" for column in columns.values())
            room = self._sink.largest_chunk() - _ARRAY_HEADER * objects
        if nbytes > room:
            raise LogInputError(
                f"stream {self.name!r}: {what} of {nbytes} bytes is larger than the {room} bytes a chunk may hold "
                f"(a quarter of the staging pool); raise the config key staging_bytes, or log it with run.tensor")
        self.columns, self._room = columns, room

    def _ship(self) -> None:
        if not self.rows:
            return
        metas, segments, offset = [], [], 0
        for column in self.columns.values():
            meta, data = column.pack()
            meta.update(offset=offset, nbytes=len(data))
            offset += len(data)
            metas.append(meta)
            segments.append(data)
        meta = {"stream": self.name, "chunk": self.chunks, "rows": self.rows, "time": time.time(), "columns": metas}
        if self.lookups:
            meta["lookups"] = self.lookups
        self.chunks += 1
        self.rows = self._nbytes = 0
        self._sink.ship(meta, b"".join(segments))

    def flush(self) -> None:
        """Ship the rows buffered so far as a (short) chunk."""
        with self._lock:
            if self.columns is not None:
                self._ship()

    def close(self) -> None:
        """Ship the last partial chunk; later appends raise ClosedError. ``Run.close`` does this too."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if self.columns is not None:
                    self._ship()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MutedStream:
    """What a muted run's ``stream`` returns: rows go nowhere."""

    __slots__ = ()

    def append(self, **row: Any) -> None:
        return None

    def extend(self, lengths=None, **columns: Any) -> None:
        return None

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> "MutedStream":
        return self

    def __exit__(self, *exc) -> None:
        return None


# --- values ------------------------------------------------------------------------------------------------
def _dtype_of(value: Any):
    """The dtype of a tensor or numpy array value, None for anything else."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return value.dtype
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        return value.dtype
    return None


def _describe(value: Any) -> str:
    dtype = _dtype_of(value)
    return f"{type(value).__name__} of {dtype}" if dtype is not None else type(value).__name__


def _checked_lookups(lookups) -> list[dict]:
    """``lookups`` as chunk meta holds them: a list of maps of ``format.Lookup``'s fields, each a str."""
    fields = Lookup.__struct_fields__
    checked = []
    for lookup in lookups or ():
        if not isinstance(lookup, dict) or set(lookup) != set(fields) or not all(
                isinstance(value, str) for value in lookup.values()):
            raise LogInputError(f"lookups must be maps of {', '.join(fields)} to str, not {lookup!r}")
        checked.append({field: lookup[field] for field in fields})
    return checked


def _new_column(name: str, value: Any):
    if not isinstance(name, str):
        raise LogInputError(f"column names must be str, not {name!r}")
    dtype = _dtype_of(value)
    return _ObjectColumn(name) if dtype is None else _TensorColumn(name, dtype)


class _Batch:
    """The row count and optional per-row lengths of one ``extend`` call."""

    def __init__(self, columns: dict, lengths):
        if not columns:
            raise LogInputError("extend needs at least one column")
        first = next(iter(columns.values()))
        self.rows = len(first) if not hasattr(first, "shape") else (first.shape[0] if len(first.shape) else -1)
        self.lengths = None if lengths is None else _row_lengths(lengths, self.rows)


def _row_lengths(lengths, rows: int) -> list[int]:
    """``lengths`` as a list of ints, one per row and none negative; floats and bools are refused."""
    dtype = _dtype_of(lengths)
    if dtype is not None:
        if not _is_integer(dtype):
            raise LogInputError(f"lengths must be integers, got {_describe(lengths)}")
        if len(lengths.shape) != 1:
            raise LogInputError(f"lengths must be one integer per row, got shape {tuple(lengths.shape)}")
        values = lengths.tolist()
    else:
        try:
            values = list(lengths)
        except TypeError:
            raise LogInputError(f"lengths must be one integer per row, got {type(lengths).__name__}") from None
        bad = [n for n in values if not isinstance(n, numbers.Integral) or isinstance(n, bool)]
        if bad:
            raise LogInputError(f"lengths must be integers, got {bad[0]!r}")
        values = [int(n) for n in values]
    if len(values) != rows:
        raise LogInputError(f"lengths has {len(values)} entries for {rows} rows")
    if values and min(values) < 0:
        raise LogInputError(f"lengths must not be negative, got {min(values)}")
    return values


def _is_integer(dtype) -> bool:
    if hasattr(dtype, "kind"):  # numpy
        return dtype.kind in "iu"
    return not (dtype.is_floating_point or dtype.is_complex or dtype == sys.modules["torch"].bool)


def _numel(shape) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


def _keep_mask(rows, kept: list[int]):
    """Boolean [n, T] mask keeping the first kept[i] entries of row i (torch or numpy, on the rows' device)."""
    if isinstance(rows, _ndarray()):
        import numpy as np

        return np.arange(rows.shape[1])[None, :] < np.asarray(kept)[:, None]
    import torch

    limits = torch.tensor(kept, device=rows.device)
    return torch.arange(rows.shape[1], device=rows.device)[None, :] < limits[:, None]


class _Held:
    """A row value taken by the slow path: its bytes (or device clone) and its shape."""

    __slots__ = ("data", "shape", "nbytes")

    def __init__(self, data, shape):
        self.data, self.shape = data, shape
        self.nbytes = data.nbytes if type(data) is memoryview else data.numel() * data.element_size()


_SCALARS = frozenset({int, float, str, bool, type(None)})
_encode_scalar = __import__("msgspec").msgpack.Encoder().encode


def _ndarray():
    numpy = sys.modules.get("numpy")
    return numpy.ndarray if numpy is not None else ()


def _strided():
    return sys.modules["torch"].strided


def _in_row_order(parts: list) -> bytearray:
    """Join host runs (bytearrays) and CUDA parts into one body, in the order given.

    The CUDA parts are gathered on the device and copied to the host in one go; each part's bytes are
    then taken back from that copy at its own place between the host runs.
    """
    device = [part for part in parts if type(part) is not bytearray]
    copied = memoryview(_gather(device)) if device else memoryview(b"")
    body, at = bytearray(), 0
    for part in parts:
        if type(part) is bytearray:
            body += part
        else:
            nbytes = part.numel() * part.element_size()
            body += copied[at : at + nbytes]
            at += nbytes
    return body


def _gather(parts: list) -> bytes:
    """The bytes of CUDA tensors, back to back: one concatenation on the first part's device, one copy."""
    import torch

    flat = [part.reshape(-1).view(torch.uint8).to(parts[0].device) for part in parts]
    return torch.cat(flat).cpu().numpy().tobytes()
