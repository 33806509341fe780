"""The on-disk layout of an asynclog file (format version 2; docs/FORMAT.md is the long form).

All integers are little-endian. A file is a 16-byte preamble, a sequence of frames, and, when the run was
closed, a footer frame followed by a 16-byte trailer::

    preamble   0   8  magic  b"ASYNCLOG"
               8   4  u32    format version (2; 1 is still read)
              12   4  u32    reserved (0)

    frame      0   4  magic  b"ALFR"
               4   1  u8     kind    (FrameKind: 1 header, 2 records, 3 tensor piece, 4 stream chunk, 5 footer)
               5   1  u8     filter  (Filter: 0 raw, 1 zstd, 2 byte-shuffle then zstd)
               6   2  u16    item size the shuffle used (0 when none)
               8   4  u32    meta_len  (bytes of msgpack meta, never filtered)
              12   8  u64    body_len  (bytes of body as stored)
              20   8  u64    raw_len   (bytes of body once the filter is undone)
              28   4  u32    checksum of bytes 0..28 of this header
              32   .  meta   msgpack map
               .   .  body   filtered bytes
               .   4  u32    checksum of meta + body as stored

    trailer    0   8  u64    offset of the footer frame
               8   8  magic  b"ALFOOTER"

The checksum is CRC-32C (Castagnoli; hardware-accelerated, the one TFRecord and iSCSI use) in version 2
and zlib's CRC-32 in version 1, which is all that changed: a file is checked by its own version's checksum
(``checksum``), so a reader that knows both reads both, and nothing else about a frame depends on it.

Checking the header on its own lets a reader skip a frame without reading its payload, and tells a torn
length apart from a torn payload. A reader that finds no trailer scans frames from the preamble; past a frame
that fails it searches forward for the next frame magic whose header checksum holds (``walk_frames``). A
stretch that fails and runs to the end of a file without a trailer is its torn tail (``Damage.torn``): what a
crash leaves while the last frame is written, so the log is incomplete, not damaged.

Reading trusts nothing a checksum does not cover, and checksums are no defence against a crafted file: the
lengths in a header are checked against the file before anything is read, and meta is decoded into the
typed structs below (``typed``), so a wrong type or a missing key is a CorruptLogError naming the offset.
Unknown keys are accepted: newer writers may add them.
"""

from __future__ import annotations

import enum
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Annotated, Any, BinaryIO, NamedTuple

import crc32c
import msgspec

__all__ = [
    "FORMAT_VERSION",
    "VERSIONS",
    "checksum",
    "FrameKind",
    "Filter",
    "FrameHeader",
    "PREAMBLE",
    "preamble",
    "PREAMBLE_SIZE",
    "HEADER_SIZE",
    "TRAILER_SIZE",
    "frame_prefix",
    "frame_suffix",
    "trailer",
    "msgpack_array",
    "read_preamble",
    "read_header",
    "read_trailer",
    "read_meta",
    "scan_frames",
    "walk_frames",
    "Damage",
]

FORMAT_VERSION = 2
SUFFIX = ".alog"  # what asynclog names its log files
FILE_MAGIC = b"ASYNCLOG"
FRAME_MAGIC = b"ALFR"
TRAILER_MAGIC = b"ALFOOTER"

_PREAMBLE = struct.Struct("<8sII")
_HEADER = struct.Struct("<4sBBHIQQ")  # everything but the header's own crc
_CRC = struct.Struct("<I")
_TRAILER = struct.Struct("<Q8s")
_ARRAY32 = struct.Struct(">BI")

# Each readable version's checksum, as fn(data, crc so far) -> crc. crc32c takes any buffer (the writer
# checksums straight from the shared-memory pool), runs at memory speed with SSE 4.2 or ARMv8 CRC, and
# releases the GIL from 32 KiB up; without those instructions it falls back to C (slice-by-8, about zlib's
# speed: correct, only slower), never to Python.
_CHECKSUMS: dict[int, Callable[..., int]] = {1: zlib.crc32, 2: crc32c.crc32c}
VERSIONS = tuple(_CHECKSUMS)
CHECKSUM_IN_HARDWARE: bool = crc32c.hardware_based


def checksum(version: int) -> Callable[..., int]:
    """The frame checksum of a format version: ``checksum(version)(data, crc_so_far=0)``."""
    return _CHECKSUMS[version]


def preamble(version: int = FORMAT_VERSION) -> bytes:
    return _PREAMBLE.pack(FILE_MAGIC, version, 0)


PREAMBLE = preamble()
PREAMBLE_SIZE = _PREAMBLE.size
HEADER_SIZE = _HEADER.size + _CRC.size
TRAILER_SIZE = _TRAILER.size
SUFFIX_SIZE = _CRC.size

_meta_encoder = msgspec.msgpack.Encoder()
_meta_decoder = msgspec.msgpack.Decoder(dict[str, Any])
_BLOCK = 1 << 20  # how much of a payload is in memory at once when it is only checked


class FrameKind(enum.IntEnum):
    HEADER = 1
    RECORDS = 2
    TENSOR = 3
    CHUNK = 4
    FOOTER = 5


class Filter(enum.IntEnum):
    RAW = 0
    ZSTD = 1
    SHUFFLE_ZSTD = 2


_KINDS = frozenset(FrameKind)


class FrameHeader(NamedTuple):
    offset: int
    kind: FrameKind
    filter: Filter
    itemsize: int
    meta_len: int
    body_len: int
    raw_len: int
    version: int = FORMAT_VERSION  # of the file it is in: picks the payload checksum

    @property
    def size(self) -> int:
        """Bytes the whole frame takes in the file."""
        return HEADER_SIZE + self.meta_len + self.body_len + SUFFIX_SIZE

    @property
    def end(self) -> int:
        return self.offset + self.size


def frame_prefix(kind: FrameKind, filt: Filter, itemsize: int, meta: bytes, body_len: int, raw_len: int,
                 version: int = FORMAT_VERSION) -> bytes:
    """Header plus meta: everything of a frame that comes before its body."""
    head = _HEADER.pack(FRAME_MAGIC, kind, filt, itemsize, len(meta), body_len, raw_len)
    return head + _CRC.pack(checksum(version)(head)) + meta


RECORDS_FRAME_BYTES = 64 << 20  # a records frame holds one batch: batch_bytes plus the record that crossed it


def records_frame_limit(batch_bytes: int) -> int:
    """The most raw bytes a records frame may hold, for a run batching up to ``batch_bytes``: readers refuse more."""
    return max(RECORDS_FRAME_BYTES, 4 * batch_bytes)


def log_start(header_meta: bytes) -> bytes:
    """A log's first bytes: the preamble and the header frame (raw, no body), which ``start()`` writes."""
    prefix = frame_prefix(FrameKind.HEADER, Filter.RAW, 0, header_meta, 0, 0)
    return PREAMBLE + prefix + frame_suffix(header_meta, b"")


def frame_suffix(meta: bytes, body, version: int = FORMAT_VERSION) -> bytes:
    """The payload checksum that closes a frame."""
    crc = checksum(version)
    return _CRC.pack(crc(body, crc(meta)))


def encode_meta(meta: dict) -> bytes:
    return _meta_encoder.encode(meta)


def decode_meta(data: bytes) -> dict:
    return _meta_decoder.decode(data)


def msgpack_array(items: list[bytes]) -> bytes:
    """Already-encoded msgpack values joined into one msgpack array (a 32-bit count header, big-endian as
    msgpack wants): how a records body and an object column are laid out."""
    return _ARRAY32.pack(0xDD, len(items)) + b"".join(items)


def trailer(footer_offset: int) -> bytes:
    return _TRAILER.pack(footer_offset, TRAILER_MAGIC)


def read_preamble(f: BinaryIO) -> int:
    """Check the preamble (read from where ``f`` stands) and return the format version."""
    from asynclog.errors import CorruptLogError

    data = f.read(PREAMBLE_SIZE)
    if len(data) < PREAMBLE_SIZE:
        raise CorruptLogError("file shorter than the asynclog preamble", 0)
    magic, version, _ = _PREAMBLE.unpack(data)
    if magic != FILE_MAGIC:
        raise CorruptLogError("not an asynclog file (bad magic)", 0)
    if version not in _CHECKSUMS:
        newer = "; a newer asynclog wrote it" if version > FORMAT_VERSION else ""
        readable = " and ".join(map(str, VERSIONS))
        raise CorruptLogError(f"format version {version}, which this asynclog does not read "
                              f"(it reads versions {readable}){newer}", 8)
    return version


START_CUT = "no preamble: the run's first bytes never reached the disk (a crash cut its start)"


def start_cut(f: BinaryIO) -> bool:
    """The file holds less than a preamble and what it holds begins one (nothing, at least): what a power cut
    leaves of a run started but never flushed. A torn tail at offset 0: incomplete, not damaged."""
    f.seek(0)
    data = f.read(PREAMBLE_SIZE)
    return len(data) < PREAMBLE_SIZE and data[:len(FILE_MAGIC)] == FILE_MAGIC[:len(data)]


def file_version(f: BinaryIO) -> int:
    """The format version of the open file ``f`` (its preamble checked), wherever ``f`` stands."""
    f.seek(0)
    return read_preamble(f)


def read_header(f: BinaryIO, offset: int, version: int, whole: bool = True) -> FrameHeader:
    """Read and check the frame header at ``offset``; raise CorruptLogError if it is torn or damaged.

    ``version`` is the file's format version (``read_preamble``'s answer), which picks the checksum.
    ``whole=False`` returns a header whose payload runs past the end of the file (a follower waits for it).
    """
    from asynclog.errors import CorruptLogError

    size = f.seek(0, os.SEEK_END)
    f.seek(offset)
    data = f.read(HEADER_SIZE)
    if len(data) < HEADER_SIZE:
        raise CorruptLogError("log cut inside a frame header", offset)
    magic, kind, filt, itemsize, meta_len, body_len, raw_len = _HEADER.unpack_from(data)
    (crc,) = _CRC.unpack_from(data, _HEADER.size)
    if magic != FRAME_MAGIC or crc != checksum(version)(data[: _HEADER.size]):
        raise CorruptLogError("frame header checksum mismatch", offset)
    if kind in _KINDS:
        kind = FrameKind(kind)  # a kind from a newer writer stays an int and is skipped by its lengths
    try:
        header = FrameHeader(offset, kind, Filter(filt), itemsize, meta_len, body_len, raw_len, version)
    except ValueError:
        raise CorruptLogError(f"unknown filter {filt}", offset) from None
    if whole and header.end > size:  # before anything reads meta_len or body_len bytes
        raise CorruptLogError("log cut inside a frame payload", offset)
    return header


def read_payload(f: BinaryIO, header: FrameHeader, verify: bool = True) -> tuple[dict, bytes]:
    """Read a frame's meta (decoded) and its body (still filtered), checking the payload checksum."""
    from asynclog.errors import CorruptLogError

    f.seek(header.offset + HEADER_SIZE)
    n = header.meta_len + header.body_len
    payload = f.read(n + SUFFIX_SIZE)
    if len(payload) < n + SUFFIX_SIZE:
        raise CorruptLogError("log cut inside a frame payload", header.offset)
    if verify:
        (crc,) = _CRC.unpack_from(payload, n)
        if crc != checksum(header.version)(memoryview(payload)[:n]):
            raise CorruptLogError("frame payload checksum mismatch", header.offset)
    return _decode_meta_at(payload[: header.meta_len], header.offset), payload[header.meta_len : n]


def read_meta(f: BinaryIO, header: FrameHeader) -> dict:
    """A frame's meta alone, without reading its body (``payload_intact`` is what checks it)."""
    from asynclog.errors import CorruptLogError

    f.seek(header.offset + HEADER_SIZE)
    data = f.read(header.meta_len)
    if len(data) < header.meta_len:
        raise CorruptLogError("log cut inside a frame payload", header.offset)
    return _decode_meta_at(data, header.offset)


def _decode_meta_at(data: bytes, offset: int) -> dict:
    from asynclog.errors import CorruptLogError

    if not data:
        return {}
    try:
        return decode_meta(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise CorruptLogError("frame meta is not a msgpack map", offset) from None
    except RecursionError:  # msgspec stops at Python's recursion limit: nested deeper than any writer nests
        raise CorruptLogError("frame meta nests too deeply", offset) from None


def payload_intact(f: BinaryIO, header: FrameHeader) -> bool:
    """Whether the payload checksum holds, reading the payload a block at a time."""
    f.seek(header.offset + HEADER_SIZE)
    left, crc, update = header.meta_len + header.body_len, 0, checksum(header.version)
    while left:
        block = f.read(min(left, _BLOCK))
        if not block:
            return False
        crc, left = update(block, crc), left - len(block)
    stored = f.read(SUFFIX_SIZE)
    return len(stored) == SUFFIX_SIZE and _CRC.unpack(stored)[0] == crc


class BodyReader:
    """A frame's stored body as a file object of its own, for streaming decompression."""

    def __init__(self, f: BinaryIO, header: FrameHeader):
        self._f, self._at, self._left = f, header.offset + HEADER_SIZE + header.meta_len, header.body_len

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        self._f.seek(self._at)
        data = self._f.read(n)
        self._at, self._left = self._at + len(data), self._left - len(data)
        return data


def read_trailer(f: BinaryIO) -> int | None:
    """Offset of the footer frame named by the trailer, or None when the file has no valid trailer."""
    size = f.seek(0, os.SEEK_END)
    if size < PREAMBLE_SIZE + TRAILER_SIZE:
        return None
    f.seek(size - TRAILER_SIZE)
    offset, magic = _TRAILER.unpack(f.read(TRAILER_SIZE))
    if magic != TRAILER_MAGIC or not PREAMBLE_SIZE <= offset < size - TRAILER_SIZE:
        return None
    return offset


def scan_frames(f: BinaryIO, verify: bool = True, version: int | None = None) -> Iterator[FrameHeader]:
    """Yield every frame header from the preamble on; raise CorruptLogError where the log stops being valid.

    With ``verify`` each payload checksum is checked too (reading every byte); without it only headers are
    read, which is enough to rebuild an index quickly.
    """
    from asynclog.errors import CorruptLogError

    for item in walk_frames(f, verify, version):
        if isinstance(item, Damage):
            raise CorruptLogError(item.reason, item.offset)
        yield item


class Damage(NamedTuple):
    """A stretch of a file a reader skipped: where it starts, how many bytes, and why.

    ``torn``: the stretch is a torn tail, what a crash leaves at the end of a log being written (a last frame
    cut short, or whose blocks never reached the disk): it runs to the end of a file that has no trailer. A
    reader calls such a log incomplete, not damaged (it cannot tell a torn last frame from a damaged one).
    """

    offset: int
    size: int
    reason: str
    torn: bool = False


def damage(exc, size: int) -> Damage:
    """The Damage a CorruptLogError describes (its message without the offset it ends with)."""
    return Damage(exc.offset, size, str(exc).removesuffix(f" at offset {exc.offset}"))


def walk_frames(f: BinaryIO, verify: bool = True, version: int | None = None) -> Iterator[FrameHeader | Damage]:
    """Like ``scan_frames``, but past a damaged stretch go on with the next intact frame, yielding a Damage
    (marked ``torn`` when it is the torn tail of a file without a trailer).

    A frame whose header holds but whose payload fails is skipped by its (checked) lengths; past a damaged
    header the next frame is found by searching for the frame magic with a header checksum that holds.
    """
    from asynclog.errors import CorruptLogError

    if version is None:
        version = file_version(f)
    size = f.seek(0, os.SEEK_END)
    offset = PREAMBLE_SIZE
    while offset < size:
        if _trailer_at(f, offset, size):
            return
        header = None
        try:
            header = read_header(f, offset, version)
            if verify and not payload_intact(f, header):
                raise CorruptLogError("frame payload checksum mismatch", offset)
        except CorruptLogError as exc:
            following = find_frame(f, header.end if header else offset + 1, size, version)
            if following is None:
                yield damage(exc, size - offset)._replace(torn=read_trailer(f) is None)
                return
            yield damage(exc, following - offset)
            offset = following
            continue
        yield header
        offset = header.end


def _trailer_at(f: BinaryIO, offset: int, size: int) -> bool:
    if size - offset != TRAILER_SIZE:
        return False
    f.seek(offset)
    return f.read(TRAILER_SIZE).endswith(TRAILER_MAGIC)


def find_frame(f: BinaryIO, start: int, size: int, version: int) -> int | None:
    """Offset of the first intact frame header at or after ``start`` (its bytes inside the file), or None."""
    from asynclog.errors import CorruptLogError

    at = start
    while at < size:
        f.seek(at)
        block = f.read(_BLOCK + len(FRAME_MAGIC) - 1)
        hit = block.find(FRAME_MAGIC)
        while hit >= 0:
            try:
                return read_header(f, at + hit, version).offset
            except CorruptLogError:
                hit = block.find(FRAME_MAGIC, hit + 1)
        at += _BLOCK
    return None


# --- meta, typed -------------------------------------------------------------------------------------------
# What each frame kind's meta must hold for a reader to use it. Structs accept unknown keys (newer writers).
Count = Annotated[int, msgspec.Meta(ge=0)]


class HeaderMeta(msgspec.Struct):
    config: dict[str, Any] = {}


class RecordsMeta(msgspec.Struct):
    count: Count


class TensorMeta(msgspec.Struct):
    name: str
    tid: Count
    dtype: str
    shape: list[Count]
    nbytes: Count
    piece: Count
    pieces: Annotated[int, msgspec.Meta(ge=1)]
    offset: Count


class TensorKey(msgspec.Struct):
    """What a scan needs to group a tensor's pieces."""

    name: str
    tid: Count


class ColumnMeta(msgspec.Struct):
    name: str
    kind: str
    offset: Count
    nbytes: Count
    dtype: str | None = None
    shapes: list[list[Count]] | None = None


class Lookup(msgspec.Struct):
    """A column a chunk does not store: each value of its ``keys`` column (a key, or a list or 1-d tensor of
    keys) looked up in the stream ``table``, each of whose rows holds in its ``key`` column a key, or a list of
    keys, and in its ``value`` column their values. A key is stored once per file and read with every row that
    holds it; the reader resolves it, and a key the table lacks reads as None."""

    column: str
    keys: str
    table: str
    key: str
    value: str


class ChunkMeta(msgspec.Struct):
    stream: str
    chunk: Count
    rows: Count
    columns: list[ColumnMeta]
    lookups: list[Lookup] = []


class StreamKey(msgspec.Struct):
    stream: str


class Index(msgspec.Struct):
    records: list[Count]
    tensors: dict[str, list[list[Count]]]
    streams: dict[str, list[Count]]


class FooterMeta(msgspec.Struct):
    complete: bool = False
    reason: str | None = None
    stats: dict[str, Any] = {}
    index: Index | None = None


META_TYPES = {FrameKind.HEADER: HeaderMeta, FrameKind.RECORDS: RecordsMeta, FrameKind.TENSOR: TensorMeta,
              FrameKind.CHUNK: ChunkMeta, FrameKind.FOOTER: FooterMeta}


def typed(meta: dict, struct_type: type, offset: int):
    """``meta`` as ``struct_type``; a CorruptLogError naming the offset when a key is missing or mistyped."""
    from asynclog.errors import CorruptLogError

    try:
        return msgspec.convert(meta, struct_type)
    except msgspec.ValidationError as exc:
        raise CorruptLogError(f"frame meta does not fit a {struct_type.__name__} ({exc})", offset) from None
