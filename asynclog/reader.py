"""Reading logs: ``asynclog.open(path)`` -> Log, lazy over records, tensors by name, streams chunk by chunk.

A closed log is opened through its trailer and footer index: finding a tensor reads only its frames. A log
without a valid footer (the probe crashed, the disk filled) is indexed by scanning frames from the start;
the scan stops at the first frame that is cut or fails its checksum, and ``Log.cut_at`` says where.

torch is imported only when a tensor or a tensor column is decoded, so ``asynclog cat`` starts fast.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import msgspec

from . import format as fmt
from .errors import CorruptLogError
from .filters import unfilter

__all__ = ["Log", "Chunk", "open_log", "verify"]

_decode = msgspec.msgpack.Decoder().decode


class Chunk:
    """One chunk of a stream: ``rows`` rows, ``columns`` mapping each column name to its list of row values."""

    def __init__(self, meta: dict, body: bytes):
        self.meta = meta
        self.rows: int = meta["rows"]
        self.index: int = meta["chunk"]
        self.columns: dict[str, list] = {c["name"]: _decode_column(c, body) for c in meta["columns"]}

    def __getitem__(self, column: str) -> list:
        return self.columns[column]

    def iter_rows(self) -> Iterator[dict]:
        names = list(self.columns)
        for values in zip(*self.columns.values()):
            yield dict(zip(names, values))


def _decode_column(column: dict, body: bytes) -> list:
    segment = memoryview(body)[column["offset"] : column["offset"] + column["nbytes"]]
    if column["kind"] == "object":
        return _decode(segment)
    import torch

    dtype = getattr(torch, column["dtype"])
    itemsize = torch.empty((), dtype=dtype).element_size()
    flat = _tensor_from_bytes(segment, torch.uint8, [len(segment)])
    values, at = [], 0
    for shape in column["shapes"]:
        n = itemsize
        for dim in shape:
            n *= dim
        values.append(flat[at : at + n].view(dtype).reshape(shape))
        at += n
    return values


def _tensor_from_bytes(data, dtype, shape):
    import torch

    if len(data) == 0:
        return torch.empty(shape, dtype=dtype)
    buffer = data if isinstance(data, bytearray) else bytearray(data)
    return torch.frombuffer(buffer, dtype=torch.uint8).view(dtype).reshape(shape)


class Log:
    """An asynclog file opened for reading. Use as a context manager or call ``close``."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._file = open(self.path, "rb")
        self.format_version = fmt.read_preamble(self._file)
        first = fmt.read_header(self._file, fmt.PREAMBLE_SIZE)
        if first.kind != fmt.FrameKind.HEADER:
            raise CorruptLogError("first frame is not a header frame", first.offset)
        self.header: dict = fmt.read_payload(self._file, first)[0]
        self.footer: dict | None = None
        self.cut_at: int | None = None
        self.cut_reason: str | None = None
        if not self._load_footer():
            self._scan()

    # --- index ----------------------------------------------------------------------------------------
    def _load_footer(self) -> bool:
        offset = fmt.read_trailer(self._file)
        if offset is None:
            return False
        try:
            header = fmt.read_header(self._file, offset)
            if header.kind != fmt.FrameKind.FOOTER:
                return False
            self.footer = fmt.read_payload(self._file, header)[0]
        except CorruptLogError:
            return False
        index = self.footer["index"]
        self._records = index["records"]
        self._tensors = index["tensors"]
        self._streams = index["streams"]
        return True

    def _scan(self) -> None:
        """Rebuild the index from the frames themselves, up to the first damaged one."""
        self._records, self._tensors, self._streams = [], {}, {}
        groups: dict[str, dict[int, list[int]]] = {}
        try:
            for header in fmt.scan_frames(self._file, verify=True):
                self._index_frame(header, groups)
        except CorruptLogError as exc:
            self.cut_at, self.cut_reason = exc.offset, str(exc)
        self._tensors = {name: list(by_tid.values()) for name, by_tid in groups.items()}

    def _index_frame(self, header: fmt.FrameHeader, groups: dict) -> None:
        if header.kind == fmt.FrameKind.RECORDS:
            self._records.append(header.offset)
        elif header.kind in (fmt.FrameKind.TENSOR, fmt.FrameKind.CHUNK):
            meta = fmt.read_payload(self._file, header, verify=False)[0]
            if header.kind == fmt.FrameKind.TENSOR:
                groups.setdefault(meta["name"], {}).setdefault(meta["tid"], []).append(header.offset)
            else:
                self._streams.setdefault(meta["stream"], []).append(header.offset)
        elif header.kind == fmt.FrameKind.FOOTER:
            self.footer = fmt.read_payload(self._file, header)[0]

    @property
    def complete(self) -> bool:
        """True when the run was closed normally and the footer says so."""
        return bool(self.footer and self.footer.get("complete"))

    @property
    def stats(self) -> dict:
        return (self.footer or {}).get("stats", {})

    # --- frames ---------------------------------------------------------------------------------------
    def _frame(self, offset: int) -> tuple[fmt.FrameHeader, dict, bytes]:
        header = fmt.read_header(self._file, offset)
        meta, stored = fmt.read_payload(self._file, header)
        return header, meta, unfilter(header.filter, header.itemsize, stored, header.raw_len)

    def frames(self) -> Iterator[tuple[fmt.FrameHeader, dict]]:
        """Every intact frame's header and meta, in file order (the footer's index left out of its meta)."""
        try:
            for header in fmt.scan_frames(self._file, verify=False):
                yield header, fmt.read_payload(self._file, header)[0]
        except CorruptLogError:
            return

    # --- records --------------------------------------------------------------------------------------
    def events(self, type: str | None = None, name: str | None = None) -> Iterator[dict]:
        """Records in the order they were logged, one frame in memory at a time; filter by type or name."""
        for offset in self._records:
            _, _, body = self._frame(offset)
            for record in _decode(body):
                if (type is None or record.get("type") == type) and (name is None or record.get("name") == name):
                    yield record

    # --- tensors --------------------------------------------------------------------------------------
    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def tensor_count(self, name: str) -> int:
        return len(self._tensors.get(name, []))

    def tensor(self, name: str, which: int = -1):
        """The tensor logged as ``name`` (the last one by default; ``which`` picks among repeats)."""
        try:
            offsets = self._tensors[name][which]
        except (KeyError, IndexError):
            raise KeyError(f"no tensor {name!r} (occurrence {which}) in {self.path}") from None
        import torch

        data, meta, filled = None, None, 0
        for offset in offsets:
            _, meta, body = self._frame(offset)
            if data is None:
                data = bytearray(meta["nbytes"])
            data[meta["offset"] : meta["offset"] + len(body)] = body
            filled += len(body)
        if filled != meta["nbytes"] or len(offsets) != meta["pieces"]:
            raise CorruptLogError(f"tensor {name!r} is missing pieces", offsets[0])
        return _tensor_from_bytes(data, getattr(torch, meta["dtype"]), meta["shape"])

    def tensors(self) -> Iterator[tuple[str, Any]]:
        """Every tensor as (name, tensor), repeats included, in the order first logged."""
        for name, groups in self._tensors.items():
            for which in range(len(groups)):
                yield name, self.tensor(name, which)

    # --- streams --------------------------------------------------------------------------------------
    def stream_names(self) -> list[str]:
        return list(self._streams)

    def stream(self, name: str) -> Iterator[Chunk]:
        """The stream's chunks in order; one chunk in memory at a time."""
        if name not in self._streams:
            raise KeyError(f"no stream {name!r} in {self.path}")
        for offset in self._streams[name]:
            _, meta, body = self._frame(offset)
            yield Chunk(meta, body)

    def rows(self, name: str) -> Iterator[dict]:
        """The stream's rows, one dict per row."""
        for chunk in self.stream(name):
            yield from chunk.iter_rows()

    # --- pandas ---------------------------------------------------------------------------------------
    def to_pandas(self, what: str = "events", type: str | None = None, name: str | None = None):
        """A pandas DataFrame: ``"events"`` gives one row per record with its ``data`` fields as columns
        (``data.<field>``); a stream's name gives one row per stream row, tensor cells as numpy arrays."""
        pd = _import_pandas()
        if what == "events":
            return pd.json_normalize(list(self.events(type=type, name=name)))
        rows = ({k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in row.items()} for row in self.rows(what))
        return pd.DataFrame(rows)

    # --- lifecycle ------------------------------------------------------------------------------------
    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Log":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"incomplete (cut at {self.cut_at})"
        return f"<asynclog.Log {self.path!r} {state}>"


def _import_pandas():
    try:
        import pandas
    except ImportError:
        raise ImportError("Log.to_pandas needs pandas: pip install 'asynclog[pandas]'") from None
    return pandas


def open_log(path: str | os.PathLike) -> Log:
    """Open a log for reading (``asynclog.open``)."""
    return Log(path)


def verify(path: str | os.PathLike) -> tuple[int, list[str]]:
    """Check every frame's checksums and filter; return (frames checked, problems). Problems name offsets."""
    problems: list[str] = []
    frames = 0
    with open(path, "rb") as f:
        try:
            fmt.read_preamble(f)
            for header in fmt.scan_frames(f, verify=True):
                _, stored = fmt.read_payload(f, header, verify=False)
                try:
                    raw = unfilter(header.filter, header.itemsize, stored, header.raw_len)
                except Exception as exc:  # noqa: BLE001 - any decoder failure is damage
                    raise CorruptLogError(f"frame body does not decode ({exc})", header.offset) from None
                if len(raw) != header.raw_len:
                    raise CorruptLogError("frame body has the wrong length", header.offset)
                frames += 1
        except CorruptLogError as exc:
            problems.append(str(exc))
        if not problems and fmt.read_trailer(f) is None:
            problems.append("no footer: the run was not closed (readable up to its last frame)")
    return frames, problems
