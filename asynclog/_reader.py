"""Reading logs: ``asynclog.open(path)`` -> Log, lazy over records, tensors by name, streams chunk by chunk.

A closed log is opened through its trailer and footer index: finding a tensor reads only its frames. A log
without a valid footer (the probe crashed, the disk filled), or whose footer index does not hold up, is
indexed by scanning every frame; past a damaged frame the scan goes on with the next intact one.
``Log.cut_at`` is where the first damage starts and ``Log.damaged`` lists every stretch skipped so far. A
torn tail (``Damage.torn``: a last frame a crash cut short or left zero-filled, in a file without a trailer)
is where the log was cut, not damage: ``cut_at`` names it when nothing before it is damaged, ``damaged``
leaves it out, and ``verify`` calls such a log incomplete.

A log is opened through ``ondisk`` (``open_regular``: a FIFO or any other file that is not regular is refused,
never waited on), and its header frame and footer are read by ``ondisk``'s rules, which ``ls`` and retention
share (``ondisk.frame_meta``, ``ondisk.footer_meta``).

Nothing in a file is trusted to size an allocation: a frame may declare at most what this run's writer
could have written in one frame (``frame_limits``), a tensor's pieces must add up to its shape, and each
piece must declare no more than a frame may hold, before its buffer is allocated; every mistyped or
inconsistent meta is a CorruptLogError naming the offset.
``events``, ``stream`` and ``tensors`` skip a damaged frame with a warning by default (``errors="raise"``
raises instead); ``tensor`` raises.

torch is imported only when a tensor or a tensor column is decoded, so ``asynclog cat`` starts fast.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import warnings
from collections.abc import Hashable, Iterator, Mapping
from typing import Any, NamedTuple

import msgspec

from asynclog import _format as fmt
from asynclog import _ondisk as ondisk
from asynclog import _tables as tables
from asynclog._filters import check_body, unfilter
from asynclog._format import Damage, FrameKind
from asynclog.errors import CorruptLogError

__all__ = ["Log", "Chunk", "Damage", "Verdict", "verify", "check", "frame_limits"]

MAX_FRAME_BYTES = 256 << 20  # the largest frame body a reader accepts when the header's config says nothing
_MAX_STAGING = 1 << 40  # a staging pool above this is a crafted header, not a machine

_decode = msgspec.msgpack.Decoder().decode
_decode_records = msgspec.msgpack.Decoder(list[dict[str, Any]]).decode


def frame_limits(config: Any) -> dict[int, int]:
    """The most raw bytes one frame of each kind may declare, from the run header's recorded config.

    Tensor pieces and stream chunks pass through the staging pool, so none is larger than ``staging_bytes``;
    a records frame is one batch of about ``batch_bytes``. Anything else falls back to ``MAX_FRAME_BYTES``.
    """
    config = config if isinstance(config, dict) else {}
    staging, batch = config.get("staging_bytes"), config.get("batch_bytes")
    if type(staging) is not int or not 1 << 20 <= staging <= _MAX_STAGING:
        staging = MAX_FRAME_BYTES
    records = fmt.RECORDS_FRAME_BYTES
    if type(batch) is int and 0 < batch <= _MAX_STAGING:
        records = fmt.records_frame_limit(batch)
    return {FrameKind.RECORDS: records, FrameKind.TENSOR: staging, FrameKind.CHUNK: staging}


@functools.lru_cache(maxsize=None)
def _known_dtype(name: str):
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        return None
    try:
        torch.empty(0, dtype=torch.uint8).view(dtype)  # quantized dtypes are not plain bytes
    except (RuntimeError, TypeError):
        return None
    return dtype


def _dtype(name: str | None, offset: int):
    """The torch dtype named in a file and its item size; CorruptLogError for anything else."""
    dtype = _known_dtype(name) if isinstance(name, str) else None
    if dtype is None:
        raise CorruptLogError(f"unknown dtype {name!r}", offset)
    return dtype, dtype.itemsize


def _nbytes(shape: list[int], itemsize: int) -> int:
    return math.prod(shape) * itemsize


_TORCH_LIMIT = 1 << 63  # torch holds sizes, strides and byte counts as int64


def _fits_torch(shape: list[int], itemsize: int) -> bool:
    """Whether torch can make a tensor of ``shape``: its strides (an empty dimension counts as one) and bytes
    fit in int64. A shape of no elements passes every byte count, so it is checked on its own."""
    return math.prod(max(size, 1) for size in shape) * itemsize < _TORCH_LIMIT


class Chunk(Mapping):
    """One chunk of a stream: ``rows`` rows, ``columns`` mapping each column name to its list of row values.

    A chunk is a read-only mapping of column names to columns, as a DataFrame is: ``chunk["logprobs"]``,
    ``list(chunk)`` (the column names), ``len(chunk)`` (the number of columns), ``chunk.items()``;
    ``iter_rows()`` gives one dict per row. Every column is checked against the chunk's bytes first; a
    CorruptLogError names ``offset`` if one fails. The columns its meta names as ``lookups`` (not stored)
    are added after the stored ones by ``Log.stream``.
    """

    def __init__(self, meta: dict, body: bytes, offset: int = 0):
        typed = fmt.typed(meta, fmt.ChunkMeta, offset)
        self.meta = meta
        self.rows: int = typed.rows
        self.index: int = typed.chunk
        self.columns: dict[str, list] = {c.name: _decode_column(c, body, typed.rows, offset) for c in typed.columns}
        self.lookups: list[fmt.Lookup] = typed.lookups
        for lookup in self.lookups:
            if lookup.keys not in self.columns or lookup.column in self.columns:
                raise CorruptLogError(f"lookup column {lookup.column!r} does not fit the chunk's columns", offset)

    def __getitem__(self, column: str) -> list:
        try:
            return self.columns[column]
        except KeyError:
            raise KeyError(missing("column", column, self.columns, f"chunk {self.index}")) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns)

    def __len__(self) -> int:
        return len(self.columns)

    # Compared and hashed by identity: Mapping's value equality would compare tensor cells, which is ambiguous.
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def iter_rows(self) -> Iterator[dict]:
        names = list(self.columns)
        for values in zip(*self.columns.values()):
            yield dict(zip(names, values))


def missing(what: str, name: Any, names, where: str) -> str:
    """Why ``name`` was not found, listing the names there are, the closest first."""
    names = [n for n in names if isinstance(n, str)]
    close = difflib.get_close_matches(str(name), names, n=len(names), cutoff=0) if names else []
    shown = ", ".join(map(repr, close[:10])) + (f", ... ({len(close)} in all)" if len(close) > 10 else "")
    return f"no {what} {name!r} in {where}; " + (f"there are: {shown}" if close else f"it has no {what}s")


def warn_unseen(name: str | None, seen: set[str] | None, where: str) -> None:
    """The warning that ends a pass of ``events`` for a ``name`` no record had (a misspelt name would
    otherwise just yield nothing); called from that generator, so it points at the caller's loop."""
    if seen is not None and name not in seen:
        warnings.warn(missing("event name", name, seen, where), stacklevel=3)


def _decode_column(column: fmt.ColumnMeta, body: bytes, rows: int, offset: int) -> list:
    if column.offset + column.nbytes > len(body):
        raise CorruptLogError(f"column {column.name!r} runs past its chunk", offset)
    segment = memoryview(body)[column.offset : column.offset + column.nbytes]
    if column.kind == "object":
        try:
            values = _decode(segment)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            raise CorruptLogError(f"column {column.name!r} is not msgpack", offset) from None
        if not isinstance(values, list) or len(values) != rows:
            raise CorruptLogError(f"column {column.name!r} does not hold {rows} values", offset)
        return values
    if column.kind != "tensor":
        raise CorruptLogError(f"column {column.name!r} has unknown kind {column.kind!r}", offset)
    dtype, itemsize = _dtype(column.dtype, offset)
    shapes = column.shapes
    if shapes is None or len(shapes) != rows or sum(_nbytes(s, itemsize) for s in shapes) != len(segment):
        raise CorruptLogError(f"column {column.name!r}: its shapes disagree with its {len(segment)} bytes", offset)
    if not all(_fits_torch(shape, itemsize) for shape in shapes):
        raise CorruptLogError(f"column {column.name!r}: a shape is larger than any tensor", offset)
    import torch

    flat = _tensor_from_bytes(segment, torch.uint8, [len(segment)])
    values, at = [], 0
    for shape in shapes:
        n = _nbytes(shape, itemsize)
        values.append(flat[at : at + n].view(dtype).reshape(shape))
        at += n
    return values


def _tensor_from_bytes(data, dtype, shape):
    import torch

    if len(data) == 0:
        return torch.empty(shape, dtype=dtype)
    buffer = data if isinstance(data, bytearray) else bytearray(data)
    return torch.frombuffer(buffer, dtype=torch.uint8).view(dtype).reshape(shape)


def _records(meta: dict, body: bytes, offset: int) -> list[dict]:
    count = fmt.typed(meta, fmt.RecordsMeta, offset).count
    try:
        records = _decode_records(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:  # ValidationError: not a list of maps
        raise CorruptLogError(f"records do not decode ({exc})", offset) from None
    if len(records) != count:
        raise CorruptLogError(f"records frame holds {len(records)} records, declares {count}", offset)
    return records


def _check_pieces(name: str, pieces: list[tuple[fmt.FrameHeader, fmt.TensorMeta]], itemsize: int) -> None:
    """The pieces of one tensor must agree with each other and tile its bytes exactly, in order."""
    first_offset, first = pieces[0][0].offset, pieces[0][1]
    at = 0
    for k, (header, meta) in enumerate(sorted(pieces, key=lambda p: p[1].piece)):
        same = (meta.name, meta.tid, meta.dtype, meta.shape, meta.nbytes, meta.pieces)
        if meta.name != name or same != (name, first.tid, first.dtype, first.shape, first.nbytes, first.pieces):
            raise CorruptLogError(f"tensor {name!r}: piece {meta.piece} disagrees with the first", header.offset)
        if meta.piece != k or meta.offset != at:
            raise CorruptLogError(f"tensor {name!r}: pieces do not follow each other", header.offset)
        at += header.raw_len
    if len(pieces) != first.pieces or at != first.nbytes or _nbytes(first.shape, itemsize) != first.nbytes:
        raise CorruptLogError(f"tensor {name!r}: its pieces do not add up to its shape", first_offset)
    if not _fits_torch(first.shape, itemsize):
        raise CorruptLogError(f"tensor {name!r}: its shape is larger than any tensor", first_offset)


class Log:
    """An asynclog file opened for reading. Use as a context manager or call ``close``."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._file = ondisk.open_regular(self.path)
        try:
            self.format_version = fmt.read_preamble(self._file)
            self.size = self._file.seek(0, os.SEEK_END)
            self.damaged: list[Damage] = []
            self._tables: dict[tuple[str, str, str], dict] = {}  # lookup tables read so far (``_table``)
            self._torn: Damage | None = None
            self.header: dict = self._read_header()
            self._limits = frame_limits(self.header.get("config"))
            self.footer: dict | None = None
            self.cut_at: int | None = None
            self.cut_reason: str | None = None
            if not self._load_footer():
                self._scan()
        except BaseException:
            self._file.close()
            raise

    def _read_header(self) -> dict:
        """The header frame's meta; {} when that frame is damaged (the rest may still be readable)."""
        try:
            first = fmt.read_header(self._file, fmt.PREAMBLE_SIZE, self.format_version)
        except CorruptLogError as exc:
            self._note(fmt.damage(exc, 0))
            return {}
        if first.kind != FrameKind.HEADER:
            raise CorruptLogError("first frame is not a header frame", first.offset)
        try:
            return ondisk.frame_meta(self._file, first)[0]
        except CorruptLogError as exc:
            self._note(fmt.damage(exc, first.size))
            return {}

    def _note(self, damage: Damage) -> None:
        if damage.torn:  # where the log was cut, not damage; the header frame may have been noted as damaged
            self._torn = damage
            self.damaged = [d for d in self.damaged if d.offset != damage.offset]
        elif all(d.offset != damage.offset for d in self.damaged):
            self.damaged.append(damage)

    def _damage(self, exc: CorruptLogError) -> Damage:
        """Damage found while reading a frame: the whole frame when its header holds, else nothing more."""
        try:
            size = fmt.read_header(self._file, exc.offset, self.format_version).size
        except CorruptLogError:
            size = 0
        return fmt.damage(exc, size)

    def _skip(self, exc: CorruptLogError, errors: str, what: str) -> None:
        """A damaged frame met while iterating: raise it, or note it and warn (``errors``)."""
        if errors == "raise":
            raise exc
        self._note(self._damage(exc))
        warnings.warn(f"asynclog: skipped {what} in {self.path}: {exc}", stacklevel=3)

    # --- index ----------------------------------------------------------------------------------------
    def _load_footer(self) -> bool:
        """Index from the footer; False (scan instead) when it is missing, damaged or points outside the file."""
        try:
            found = ondisk.footer_meta(self._file, self.size, self.format_version)
        except CorruptLogError:
            return False
        if found is None:
            return False
        offset, meta, typed = found
        index = typed.index
        if index is None or not _index_within(index, offset):
            return False
        self.footer = meta
        self._records, self._tensors, self._streams = index.records, index.tensors, index.streams
        return True

    def _scan(self) -> None:
        """Rebuild the index from the frames themselves, going on past damaged ones."""
        self._records, self._tensors, self._streams = [], {}, {}
        groups: dict[str, dict[int, list[int]]] = {}
        for item in fmt.walk_frames(self._file, verify=True, version=self.format_version):
            if isinstance(item, Damage):
                self._note(item)
                continue
            try:
                self._index_frame(item, groups)
            except CorruptLogError as exc:
                self._note(fmt.damage(exc, item.size))
        self._tensors = {name: list(by_tid.values()) for name, by_tid in groups.items()}
        first = self.damaged[0] if self.damaged else self._torn
        if first is not None:
            self.cut_at, self.cut_reason = first.offset, first.reason

    def _index_frame(self, header: fmt.FrameHeader, groups: dict) -> None:
        if header.kind == FrameKind.RECORDS:
            self._records.append(header.offset)
        elif header.kind == FrameKind.TENSOR:
            key = fmt.typed(fmt.read_meta(self._file, header), fmt.TensorKey, header.offset)
            groups.setdefault(key.name, {}).setdefault(key.tid, []).append(header.offset)
        elif header.kind == FrameKind.CHUNK:
            key = fmt.typed(fmt.read_meta(self._file, header), fmt.StreamKey, header.offset)
            self._streams.setdefault(key.stream, []).append(header.offset)
        elif header.kind == FrameKind.FOOTER:
            meta = fmt.read_meta(self._file, header)
            fmt.typed(meta, fmt.FooterMeta, header.offset)
            self.footer = meta

    @property
    def complete(self) -> bool:
        """True when the run was closed normally and the footer says so."""
        return bool(self.footer and self.footer.get("complete") is True)

    @property
    def stats(self) -> dict:
        stats = (self.footer or {}).get("stats")
        return stats if isinstance(stats, dict) else {}

    # --- frames ---------------------------------------------------------------------------------------
    def _frame(self, offset: int, kind: FrameKind) -> tuple[fmt.FrameHeader, dict, bytes]:
        """The frame at ``offset``, which must be of ``kind``: header, meta and raw body, all checked."""
        header = self._header(offset, kind)
        return header, *self._payload(header)

    def _header(self, offset: int, kind: FrameKind) -> fmt.FrameHeader:
        header = fmt.read_header(self._file, offset, self.format_version)
        if header.kind != kind:
            raise CorruptLogError(f"expected a {kind.name.lower()} frame, found kind {int(header.kind)}", offset)
        return header

    def _check_size(self, header: fmt.FrameHeader) -> None:
        limit = self._limits.get(header.kind, MAX_FRAME_BYTES)
        if header.raw_len > limit:
            raise CorruptLogError(f"frame declares {header.raw_len} bytes, more than this run writes in one "
                                  f"frame ({limit})", header.offset)

    def _payload(self, header: fmt.FrameHeader) -> tuple[dict, bytes]:
        self._check_size(header)
        meta, stored = fmt.read_payload(self._file, header)
        try:
            return meta, unfilter(header.filter, header.itemsize, stored, header.raw_len)
        except ValueError as exc:
            raise CorruptLogError(f"frame body does not decode: {exc}", header.offset) from None

    def walk(self) -> Iterator[tuple[fmt.FrameHeader, dict] | Damage]:
        """Every intact frame's header and meta in file order, and a Damage for each stretch skipped
        (a frame whose meta does not fit its kind counts as damaged)."""
        for item in fmt.walk_frames(self._file, verify=True, version=self.format_version):
            if not isinstance(item, Damage):
                try:
                    item = item, _typed_meta(self._file, item)
                except CorruptLogError as exc:
                    item = fmt.damage(exc, item.size)
            if isinstance(item, Damage):
                self._note(item)
            yield item

    def meta(self, header: fmt.FrameHeader) -> dict:
        """A frame's meta, checked against its kind's struct (a CorruptLogError when it does not fit)."""
        return _typed_meta(self._file, header)

    def frames(self) -> Iterator[tuple[fmt.FrameHeader, dict]]:
        """Every intact frame's header and meta, in file order (damaged ones are noted in ``damaged``)."""
        for item in self.walk():
            if not isinstance(item, Damage):
                yield item

    # --- records --------------------------------------------------------------------------------------
    def records(self, header: fmt.FrameHeader) -> list[dict]:
        """The records of one records frame, checked: a CorruptLogError when they are not what it declares."""
        return _records(*self._payload(header), header.offset)

    def events(self, type: str | None = None, name: str | None = None, errors: str = "warn") -> Iterator[dict]:
        """Records in the order they were logged, one frame in memory at a time; filter by type or name.

        A damaged records frame is skipped with a warning (and noted in ``damaged``), or raised with
        ``errors="raise"``. When ``name`` occurs in no record, the pass ends with a warning listing the
        names that do, closest first (a misspelt name would otherwise just yield nothing).
        """
        _check_errors(errors)
        seen: set[str] | None = None if name is None else set()
        yield from self._events(type, name, errors, seen)
        warn_unseen(name, seen, self.path)

    def _events(self, type: str | None, name: str | None, errors: str = "warn",
                seen: set[str] | None = None) -> Iterator[dict]:
        """``events`` without the warning: the name of every record read (of any type) goes into ``seen``
        when one is given, so a caller reading several logs can warn once for all of them."""
        for offset in self._records:
            try:
                records = _records(*self._frame(offset, FrameKind.RECORDS)[1:], offset)
            except CorruptLogError as exc:
                self._skip(exc, errors, f"the records frame at offset {offset}")
                continue
            if seen is not None:
                seen.update(r.get("name") for r in records if isinstance(r.get("name"), str))
            for record in records:
                if (type is None or record.get("type") == type) and (name is None or record.get("name") == name):
                    yield record

    # --- tensors --------------------------------------------------------------------------------------
    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def tensor_count(self, name: str) -> int:
        return len(self._tensors.get(name, []))

    def tensor(self, name: str, which: int = -1):
        """The tensor logged as ``name`` (the last one by default; ``which`` picks among repeats).

        KeyError when there is no such tensor; CorruptLogError when its frames are damaged or disagree.
        """
        if name not in self._tensors:
            raise KeyError(missing("tensor", name, self._tensors, self.path))
        try:
            offsets = self._tensors[name][which]
        except (IndexError, TypeError):
            count = len(self._tensors[name])
            raise KeyError(f"tensor {name!r} was logged {count} time(s) in {self.path}; which={which!r} "
                           f"is not among them") from None
        try:
            return self._assemble(name, offsets)
        except CorruptLogError as exc:
            self._note(self._damage(exc))
            raise

    def _assemble(self, name: str, offsets: list[int]):
        if not offsets:
            raise CorruptLogError(f"tensor {name!r} has no pieces in the index", self.size)
        pieces = [self._piece(offset) for offset in offsets]
        dtype, itemsize = _dtype(pieces[0][1].dtype, offsets[0])
        _check_pieces(name, pieces, itemsize)
        for header, _ in pieces:  # each piece's size, before the tensor they declare is allocated
            self._check_size(header)
        data = bytearray(pieces[0][1].nbytes)
        for header, meta in pieces:
            body = self._payload(header)[1]
            data[meta.offset : meta.offset + len(body)] = body
        return _tensor_from_bytes(data, dtype, pieces[0][1].shape)

    def _piece(self, offset: int) -> tuple[fmt.FrameHeader, fmt.TensorMeta]:
        header = self._header(offset, FrameKind.TENSOR)
        return header, fmt.typed(fmt.read_meta(self._file, header), fmt.TensorMeta, offset)

    def tensors(self, errors: str = "warn") -> Iterator[tuple[str, Any]]:
        """Every tensor as (name, tensor), repeats included, in the order first logged; a damaged one is
        skipped with a warning, or raised with ``errors="raise"``."""
        _check_errors(errors)
        for name, groups in self._tensors.items():
            for which in range(len(groups)):
                try:
                    tensor = self.tensor(name, which)
                except CorruptLogError as exc:
                    self._skip(exc, errors, f"tensor {name!r} (occurrence {which})")
                    continue
                yield name, tensor

    # --- streams --------------------------------------------------------------------------------------
    def stream_names(self) -> list[str]:
        return list(self._streams)

    def stream(self, name: str, errors: str = "warn") -> Iterator[Chunk]:
        """The stream's chunks in order; one chunk in memory at a time, with its lookup columns made.

        A chunk whose frame is damaged or whose columns disagree with its bytes is skipped with a warning
        naming it (and noted in ``damaged``), or raised with ``errors="raise"``.
        """
        _check_errors(errors)
        if name not in self._streams:
            raise KeyError(missing("stream", name, self._streams, self.path))
        for chunk in self._chunks(name, errors):
            yield self._looked_up(chunk, errors)

    def _chunks(self, name: str, errors: str) -> Iterator[Chunk]:
        """The chunks of a stream the log has, as stored."""
        for k, offset in enumerate(self._streams[name]):
            try:
                _, meta, body = self._frame(offset, FrameKind.CHUNK)
                chunk = Chunk(meta, body, offset)
                if meta["stream"] != name:
                    raise CorruptLogError(f"the index puts a chunk of {meta['stream']!r} in {name!r}", offset)
            except CorruptLogError as exc:
                self._skip(exc, errors, f"chunk {k} of stream {name!r}")
                continue
            yield chunk

    def rows(self, name: str) -> Iterator[dict]:
        """The stream's rows, one dict per row."""
        for chunk in self.stream(name):
            yield from chunk.iter_rows()

    # The one place lookup columns (format.Lookup) are made: every reading path (rows, to_pandas, the
    # exports, a run folder's shards) goes through ``stream``.
    def _looked_up(self, chunk: Chunk, errors: str) -> Chunk:
        """``chunk`` with each lookup column added: its ``keys`` column's values mapped through the table."""
        for lookup in chunk.lookups:
            table = self._table(lookup, errors)
            chunk.columns[lookup.column] = [_look_up(keys, table) for keys in chunk.columns[lookup.keys]]
        return chunk

    def _table(self, lookup: fmt.Lookup, errors: str) -> dict:
        """The stream ``lookup.table`` as a map of its ``key`` column to its ``value`` column (a row holds a
        key and its value, or a list of keys and the list of their values), read once per Log; empty without
        that stream (a run cut before it wrote its table)."""
        where = (lookup.table, lookup.key, lookup.value)
        table = self._tables.get(where)
        if table is None:
            table = self._tables[where] = {}
            for chunk in self._chunks(lookup.table, errors) if lookup.table in self._streams else ():
                for keys, values in zip(chunk.columns.get(lookup.key, ()), chunk.columns.get(lookup.value, ())):
                    keys = _plain(keys)
                    if not isinstance(keys, list):
                        keys, values = [keys], [values]
                    if isinstance(values, list):
                        table.update((k, v) for k, v in zip(keys, values) if isinstance(k, Hashable))
        return table

    # --- pandas ---------------------------------------------------------------------------------------
    def to_pandas(self, what: str = "events", type: str | None = None, name: str | None = None):
        """A pandas DataFrame: ``"events"`` gives one row per record with its ``data`` fields as columns
        (``data.<field>``); a stream's name gives one row per stream row, tensor cells as numpy arrays."""
        return frame_of(self, what, type, name)

    def sequences(self, batch: str = "E_batch"):
        """One row per sequence of ``batch`` as a pandas DataFrame (``tables.sequences``)."""
        return tables.sequences(self, batch)

    def tokens(self, batch: str = "E_batch"):
        """One row per token of ``batch`` as a pandas DataFrame (``tables.tokens``)."""
        return tables.tokens(self, batch)

    # --- lifecycle ------------------------------------------------------------------------------------
    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Log":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _repr_html_(self) -> str:
        """Jupyter shows the run's summary card (``asynclog.tools.report.run_card``)."""
        from asynclog.tools.report import run_card

        return run_card(self)

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"incomplete (cut at {self.cut_at})"
        return f"<asynclog.Log {self.path!r} {state}>"


def _plain(value):
    """A tensor cell as a number or list (``tolist``), anything else as it is (a tensor of a dtype torch gives
    no numbers of, such as torch.bits8, too: as a key, the table lacks it)."""
    try:
        return value.tolist() if hasattr(value, "tolist") else value
    except RuntimeError:
        return value


def _look_up(keys, table: dict):
    """One row's lookup: a key's value, or a list of values for a row of keys (a list or 1-d tensor);
    None for a key the table lacks or cannot hold (an unhashable one)."""
    keys = _plain(keys)
    if not isinstance(keys, list):
        return _get(table, keys)
    try:
        return list(map(table.get, keys))
    except TypeError:  # an unhashable key: look up one at a time
        return [_get(table, key) for key in keys]


def _get(table: dict, key):
    return table.get(key) if isinstance(key, Hashable) else None


def _index_within(index: fmt.Index, footer_offset: int) -> bool:
    """Every offset of a footer index lies between the preamble and the footer, and no tensor is empty."""
    offsets = [*index.records, *(o for group in index.tensors.values() for piece in group for o in piece),
               *(o for chunks in index.streams.values() for o in chunks)]
    groups_whole = all(pieces for group in index.tensors.values() for pieces in group)
    return groups_whole and all(fmt.PREAMBLE_SIZE <= o < footer_offset for o in offsets)


def _check_errors(errors: str) -> None:
    if errors not in ("warn", "raise"):
        raise ValueError(f"errors must be 'warn' or 'raise', not {errors!r}")


def frame_of(log, what: str, type: str | None, name: str | None):
    """``to_pandas`` for anything with ``events`` and ``rows`` (a Log, a ShardedLog)."""
    pd = tables.need("pandas", "pandas")
    if what == "events":
        return pd.json_normalize(list(log.events(type=type, name=name)))
    rows = ({k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in row.items()} for row in log.rows(what))
    return pd.DataFrame(rows)






# --- verify ---------------------------------------------------------------------------------------------
class Verdict(NamedTuple):
    """What ``check`` found: intact frames, damaged stretches, and why the run is not known complete
    (None when its footer says it was closed normally). A torn tail is not among the damaged stretches:
    ``incomplete`` names it."""

    frames: int
    damaged: list[Damage]
    incomplete: str | None


def check(path: str | os.PathLike) -> Verdict:
    """Check every frame of a log: checksums, typed meta, and that each body decodes to its declared
    length within this run's frame limits. Bodies are decompressed a block at a time, so memory stays
    small whatever a frame declares."""
    frames, damaged, torn, footer, limits = 0, [], None, None, frame_limits(None)
    with ondisk.open_regular(path) as f:
        try:
            version = fmt.read_preamble(f)
        except CorruptLogError as exc:
            if fmt.start_cut(f):
                return Verdict(0, [], fmt.START_CUT)
            return Verdict(0, [fmt.damage(exc, f.seek(0, os.SEEK_END))], "not an asynclog file")
        for item in fmt.walk_frames(f, verify=True, version=version):
            if isinstance(item, Damage) and item.torn:
                torn = item
                continue
            try:
                if isinstance(item, Damage):
                    raise CorruptLogError(item.reason, item.offset)
                meta = _check_frame(f, item, limits)
            except CorruptLogError as exc:
                damaged.append(item if isinstance(item, Damage) else fmt.damage(exc, item.size))
                continue
            frames += 1
            if item.kind == FrameKind.HEADER and item.offset == fmt.PREAMBLE_SIZE:
                limits = frame_limits(meta.get("config"))
            elif item.kind == FrameKind.FOOTER:
                footer = meta
        closed = fmt.read_trailer(f) is not None
    return Verdict(frames, damaged, _incomplete(footer, closed, torn))


def _typed_meta(f, header: fmt.FrameHeader) -> dict:
    """A frame's meta, checked against its kind's struct but returned as the map it is (extra keys kept)."""
    meta = fmt.read_meta(f, header)
    if header.kind in fmt.META_TYPES:
        fmt.typed(meta, fmt.META_TYPES[header.kind], header.offset)
    return meta


def _check_frame(f, header: fmt.FrameHeader, limits: dict) -> dict:
    meta = _typed_meta(f, header)
    limit = limits.get(header.kind, MAX_FRAME_BYTES)
    if header.raw_len > limit:
        raise CorruptLogError(f"frame declares {header.raw_len} bytes, more than this run writes in one "
                              f"frame ({limit})", header.offset)
    try:
        check_body(header.filter, header.itemsize, fmt.BodyReader(f, header), header.body_len, header.raw_len)
    except ValueError as exc:
        raise CorruptLogError(f"frame body does not decode: {exc}", header.offset) from None
    return meta


def _incomplete(footer: dict | None, closed: bool, torn: Damage | None = None) -> str | None:
    if torn is not None:
        return (f"no footer: the run was not closed, and its last frame, at offset {torn.offset} ({torn.size} "
                f"bytes), is torn ({torn.reason}), as a crash leaves it (readable up to there)")
    if footer is None or not closed:
        return "no footer: the run was not closed (readable up to its last frame)"
    if footer.get("complete") is not True:
        return f"incomplete: the footer says the run did not close normally ({footer.get('reason')})"
    return None


def verify(path: str | os.PathLike) -> tuple[int, list[str]]:
    """Check every frame (see ``check``); return (intact frames, problems). Problems name offsets: each
    damaged stretch, then a missing footer. A footer marked incomplete is not a problem here (``check``)."""
    frames, damaged, incomplete = check(path)
    problems = [f"{d.reason} at offset {d.offset} ({d.size} bytes)" for d in damaged]
    if incomplete and incomplete.startswith("no footer"):
        problems.append(incomplete)
    return frames, problems
