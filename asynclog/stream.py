"""Stream: a chunked, columnar table (per-sequence or per-token rows) that never holds more than one chunk.

``append(**row)`` copies the row's values into per-column buffers; when ``chunk_rows`` rows are buffered the
chunk is packed into one body, copied into the staging pool, handed to the writer, and forgotten.

Columns are fixed by the first row. A column is either
- ``tensor``: every value is a torch tensor or numpy array of one dtype; rows may differ in shape (ragged
  token rows). The chunk stores the bytes of all rows back to back and each row's shape.
- ``object``: any other msgpack-able value (numbers, str, None, lists, dicts with str keys); stored as a
  msgpack array.

The chunk body is the columns' segments back to back; the frame meta says where each one is (docs/FORMAT.md).
CUDA tensor values are kept on the device until the chunk ships; then each column is gathered on the device
and copied to the host once per chunk.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from .errors import ClosedError, LogInputError
from .format import msgpack_array
from .snapshot import host_bytes

__all__ = ["Stream", "MutedStream"]



class _TensorColumn:
    """Rows of one dtype; bytes kept back to back in one growing buffer, shapes beside them."""

    kind = "tensor"

    def __init__(self, name: str, dtype):
        self.name, self.dtype = name, dtype
        torch = sys.modules.get("torch")
        self.tensor_type = torch.Tensor if torch is not None else None
        self.data = bytearray()
        self.device_parts: list = []  # CUDA rows, gathered on the device when the chunk ships
        self.shapes: list = []

    def prepare(self, value: Any):
        """Check a row value and return what ``add`` stores; raises before anything is buffered.

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
        if type(value) is _Held:
            self.shapes.append(value.shape)
            if type(value.data) is memoryview:
                self.data.extend(value.data)
            else:
                self.device_parts.append(value.data)
            return
        self.shapes.append(value.shape)
        try:
            self.data.extend(value)  # C-contiguous arrays export their bytes directly
        except TypeError:
            self.data.extend(value.tobytes())

    def prepare_many(self, values: Any, batch: "_Batch"):
        if _dtype_of(values) != self.dtype:
            raise LogInputError(f"column {self.name!r} holds {self.dtype}, got {_describe(values)}")
        if len(values.shape) == 0 or values.shape[0] != batch.rows:
            raise LogInputError(f"column {self.name!r} has {tuple(values.shape)[:1]} rows, expected {batch.rows}")
        if not isinstance(values, _ndarray()) and values.layout is not _strided():
            raise LogInputError(f"column {self.name!r}: {values.layout} tensors cannot be logged")
        return values.detach() if hasattr(values, "detach") else values

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
            self.device_parts.append(rows.contiguous())
        elif isinstance(rows, _ndarray()):
            self.data.extend(rows.tobytes())
        else:
            self.data.extend(host_bytes(rows))

    def pack(self) -> tuple[dict, bytes]:
        data = _gather(self.device_parts) if self.device_parts else self.data
        meta = {"name": self.name, "kind": "tensor", "dtype": _dtype_name(self.dtype),
                "shapes": [list(shape) for shape in self.shapes]}
        self.data, self.device_parts, self.shapes = bytearray(), [], []
        return meta, data


class _ObjectColumn:
    """Plain values, each encoded with msgspec as it arrives (so bad values fail at the call site)."""

    kind = "object"

    def __init__(self, name: str):
        self.name = name
        self.parts: list[bytes] = []

    def prepare(self, value: Any) -> bytes:
        if type(value) in _SCALARS:
            return _encode_scalar(value)
        if _dtype_of(value) is not None:
            raise LogInputError(f"column {self.name!r} holds plain values, got {_describe(value)}")
        from .run import encode_value

        return encode_value(value, f"column {self.name!r}")

    def add(self, encoded: bytes) -> None:
        self.parts.append(encoded)

    def prepare_many(self, values: Any, batch: "_Batch") -> list[bytes]:
        if _dtype_of(values) is not None or len(values) != batch.rows:
            raise LogInputError(f"column {self.name!r} needs a list of {batch.rows} plain values")
        return [self.prepare(value) for value in values]

    def add_many(self, encoded: list[bytes], batch: "_Batch", lo: int, hi: int) -> None:
        self.parts.extend(encoded[lo:hi])

    def pack(self) -> tuple[dict, bytes]:
        data = msgpack_array(self.parts)
        self.parts = []
        return {"name": self.name, "kind": "object"}, data


class Stream:
    """Made by ``Run.stream``; ``append`` rows, ``flush`` a partial chunk, ``close`` when done (optional)."""

    def __init__(self, run, name: str, chunk_rows: int):
        if not isinstance(chunk_rows, int) or chunk_rows <= 0:
            raise LogInputError(f"chunk_rows must be a positive int, not {chunk_rows!r}")
        self.run, self.name, self.chunk_rows = run, name, chunk_rows
        self.columns: dict[str, _TensorColumn | _ObjectColumn] | None = None
        self.rows = 0
        self.chunks = 0
        self._closed = False

    def append(self, **row: Any) -> None:
        """Buffer one row; ship the chunk when it is full. Values are copied: the caller may reuse them."""
        start = time.perf_counter_ns()
        run = self.run
        if self._closed or run._closed or run._channel.error is not None:
            if self._closed:
                raise ClosedError(f"stream {self.name!r} is closed")
            run._check_open()
        columns = self.columns
        if columns is None:
            columns = self._define(row)
        # Check every value before buffering any, so a bad row leaves the chunk unchanged.
        try:
            if len(row) != len(columns):
                raise KeyError
            prepared = [column.prepare(row[name]) for name, column in columns.items()]
        except KeyError:
            raise LogInputError(f"stream {self.name!r} has columns {sorted(columns)}, row has {sorted(row)}") from None
        for column, value in zip(columns.values(), prepared):
            column.add(value)
        self.rows += 1
        if self.rows >= self.chunk_rows:
            self._ship()
        run.accounting.add(time.perf_counter_ns() - start)

    def extend(self, lengths=None, **columns: Any) -> None:
        """Append many rows at once, the fast path for batch data: one copy per column per chunk.

        Each tensor (or numpy array) column's first dimension indexes rows; a list column holds one plain
        value per row. With ``lengths`` (one int per row), tensor columns of two or more dimensions keep
        only the first ``lengths[i]`` entries of row i: ragged token rows straight from a padded [N, T] batch.
        """
        start = time.perf_counter_ns()
        if self._closed:
            raise ClosedError(f"stream {self.name!r} is closed")
        self.run._check_open()
        batch = _Batch(columns, lengths)
        if self.columns is None:
            self._define(batch.first_row())
        if columns.keys() != self.columns.keys():
            raise LogInputError(f"stream {self.name!r} has columns {sorted(self.columns)}, got {sorted(columns)}")
        prepared = {name: column.prepare_many(columns[name], batch) for name, column in self.columns.items()}
        at = 0
        while at < batch.rows:
            take = min(batch.rows - at, self.chunk_rows - self.rows)
            for name, column in self.columns.items():
                column.add_many(prepared[name], batch, at, at + take)
            self.rows += take
            at += take
            if self.rows >= self.chunk_rows:
                self._ship()
        self.run.accounting.add(time.perf_counter_ns() - start)

    def _define(self, row: dict) -> dict:
        if not row:
            raise LogInputError("a stream row needs at least one column")
        columns = {name: _new_column(name, value) for name, value in row.items()}
        self.columns = columns
        return columns

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
        body = b"".join(segments)
        self.chunks += 1
        self.rows = 0
        self.run.accounting.bytes_in += len(body)
        self.run._stage_chunk(meta, body)

    def flush(self) -> None:
        """Ship the rows buffered so far as a (short) chunk."""
        if self.columns is not None:
            self._ship()

    def close(self) -> None:
        """Ship the last partial chunk; later appends raise ClosedError. ``Run.close`` does this too."""
        if not self._closed:
            self.flush()
            self._closed = True

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MutedStream:
    """What a muted run's ``stream`` returns: rows go nowhere."""

    __slots__ = ()

    def append(self, **row: Any) -> None:
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


def _dtype_name(dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    return {"float": "float32", "double": "float64"}.get(name, name)


def _describe(value: Any) -> str:
    dtype = _dtype_of(value)
    return f"{type(value).__name__} of {dtype}" if dtype is not None else type(value).__name__


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
        self.columns = columns
        self.lengths = None
        if lengths is not None:
            self.lengths = [int(n) for n in (lengths.tolist() if hasattr(lengths, "tolist") else lengths)]
            if len(self.lengths) != self.rows:
                raise LogInputError(f"lengths has {len(self.lengths)} entries for {self.rows} rows")

    def first_row(self) -> dict:
        """A sample row that fixes the columns' kinds and dtypes."""
        return {name: (values[0] if _dtype_of(values) is not None else (values[0] if len(values) else None))
                for name, values in self.columns.items()}


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

    __slots__ = ("data", "shape")

    def __init__(self, data, shape):
        self.data, self.shape = data, shape


_SCALARS = frozenset({int, float, str, bool, type(None)})
_encode_scalar = __import__("msgspec").msgpack.Encoder().encode


def _ndarray():
    numpy = sys.modules.get("numpy")
    return numpy.ndarray if numpy is not None else ()


def _strided():
    return sys.modules["torch"].strided


def _gather(parts: list) -> bytes:
    """Concatenate CUDA rows on the device and copy them to the host once per chunk."""
    import torch

    flat = torch.cat([p.reshape(-1).view(torch.uint8) for p in parts])
    return flat.cpu().numpy().tobytes()
