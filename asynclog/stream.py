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

import struct
import sys
import time
from typing import Any

from .errors import ClosedError, LogInputError
from .snapshot import host_bytes

__all__ = ["Stream", "MutedStream"]

_ARRAY32 = struct.Struct(">BI")


class _TensorColumn:
    kind = "tensor"

    def __init__(self, name: str, dtype):
        self.name, self.dtype = name, dtype
        self.parts: list = []
        self.shapes: list[list[int]] = []

    def check(self, value: Any) -> None:
        if _dtype_of(value) != self.dtype:
            raise LogInputError(f"column {self.name!r} holds {self.dtype}, got {_describe(value)}")

    def add(self, value: Any) -> None:
        self.parts.append(_row_bytes(value))
        self.shapes.append(list(value.shape))

    def pack(self) -> tuple[dict, bytes]:
        data = _join(self.parts)
        meta = {"name": self.name, "kind": "tensor", "dtype": _dtype_name(self.dtype), "shapes": self.shapes}
        self.parts, self.shapes = [], []
        return meta, data


class _ObjectColumn:
    kind = "object"

    def __init__(self, name: str):
        self.name = name
        self.parts: list[bytes] = []

    def check(self, value: Any) -> None:
        if _dtype_of(value) is not None:
            raise LogInputError(f"column {self.name!r} holds plain values, got {_describe(value)}")

    def add(self, encoded: bytes) -> None:
        self.parts.append(encoded)

    def pack(self) -> tuple[dict, bytes]:
        data = _ARRAY32.pack(0xDD, len(self.parts)) + b"".join(self.parts)
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
        if self._closed:
            raise ClosedError(f"stream {self.name!r} is closed")
        self.run._check_open()
        if self.columns is None:
            self.columns = {name: _new_column(name, value) for name, value in row.items()}
            if not self.columns:
                raise LogInputError("a stream row needs at least one column")
        encoded = self._check_row(row)
        for name, column in self.columns.items():
            column.add(encoded.get(name, row[name]))
        self.rows += 1
        if self.rows >= self.chunk_rows:
            self._ship()
        self.run.accounting.add(time.perf_counter_ns() - start)

    def _check_row(self, row: dict) -> dict:
        """Validate every column before touching any buffer, so a bad row leaves the chunk unchanged."""
        if row.keys() != self.columns.keys():
            raise LogInputError(f"stream {self.name!r} has columns {sorted(self.columns)}, row has {sorted(row)}")
        from .run import encode_value

        encoded = {}
        for name, column in self.columns.items():
            value = row[name]
            column.check(value)
            if column.kind == "object":
                encoded[name] = encode_value(value, f"stream {self.name!r} column {name!r}")
            elif getattr(value, "layout", None) is not None and str(value.layout) != "torch.strided":
                raise LogInputError(f"stream {self.name!r} column {name!r}: {value.layout} tensors are not supported")
        return encoded

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


def _row_bytes(value: Any):
    """A private copy of the value's bytes: bytes for host data, a device clone for CUDA tensors."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        return value.tobytes()
    if value.is_cuda:
        return value.detach().clone()
    return host_bytes(value).tobytes()


def _join(parts: list) -> bytes:
    """Concatenate row bytes; device clones are gathered on the device and copied to the host once."""
    if parts and not isinstance(parts[0], bytes):
        import torch

        flat = torch.cat([p.reshape(-1).view(torch.uint8) for p in parts])
        return flat.cpu().numpy().tobytes()
    return b"".join(parts)
