"""What is on disk about a run, read safely: the one module that opens a run's files after the run.

A run on disk (docs/FORMAT.md draws the log inside; ``ranks.py`` the run folder of a job)::

    <folder>/
    ├── <name>.alog                   the log: preamble, header frame, frames, footer frame, trailer
    ├── <name>_summary.json           its summary sidecar (DetailedLogger; the writer, after a crash)
    ├── .asynclog-index               the folder's cache of ls rows (index.py)
    └── <name>/                       a run of a job of several ranks, as one folder
        ├── manifest.json             rank 0's note of the run: format, name, world_size, shards
        ├── rank-NNNNN.alog           each rank's log
        └── rank-NNNNN_summary.json   each rank's summary

``reader``, ``shards``, ``index``, the read side of ``layout``'s retention and every tool (``ls``, ``sweep``,
``show``, ``plot``, ``export``) read these files through this module, so each is read one way:

- **Opened without waiting, and only when regular** (``open_regular``): non-blocking, then ``fstat``; a
  FIFO, socket, device or folder under a run's file name is ``NotARegularFile``, never a read that waits
  forever. A sidecar, manifest or index is opened without following a link (asynclog writes them by
  rename, so a link there is not what it wrote); a log is opened through one (a user may link a log).
- **Read within a limit** (``read_bounded``): a file larger than what asynclog writes is refused, not read.
- **One rule for "closed"** (``peek``): the header frame and the footer frame the trailer names, each within
  its ``META_LIMIT`` (16 MiB, 64 MiB) and checked against its typed meta; ``Peek.closed`` when that footer is
  sound.
- **Sidecars decoded into typed schemas** (``Summary``, ``Manifest``): unknown keys are kept, a key a tool
  reads that holds the wrong type is a ``SidecarError`` naming the key, and no value nests deeper than
  ``MAX_DEPTH`` (msgspec and the tools recurse: a deeper one would exhaust Python's stack).
- **A run folder is the shards that are there** (``RunFolder``): the manifest's ``world_size`` (at most
  ``MAX_WORLD_SIZE``) says which ranks to expect, but only the folder's entries are read, so a manifest that
  claims many ranks costs what the folder holds.

Nothing here imports a tool; the tools sit on it (``tests/test_ondisk.py``).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from typing import Annotated, Any, BinaryIO, NamedTuple

import msgspec

from asynclog import _format as fmt
from asynclog._format import SUFFIX, FrameKind
from asynclog.errors import AsyncLogError, CorruptLogError

__all__ = [
    "SUFFIX", "SUMMARY_SUFFIX", "INDEX_NAME", "MANIFEST", "SHARDS_ID", "SHARD_STEM", "shard_stem", "shard_name",
    "summary_path",
    "NotARegularFile", "SidecarError", "open_regular", "read_bounded",
    "META_LIMIT", "Peek", "peek", "peek_path", "header_of", "frame_meta", "header_meta", "footer_meta",
    "MAX_DEPTH", "SUMMARY_LIMIT", "RunMetadata", "LoggingCost", "Summary", "SummaryFile", "read_summary",
    "checked", "MAX_WORLD_SIZE", "MANIFEST_LIMIT", "manifest_limit", "Manifest", "decode_manifest",
    "RunFolder", "run_folder", "is_run_folder", "run_files", "CONFIG_SUFFIX", "RANK_CONFIG", "config_path",
    "read_config",
]

# --- names ------------------------------------------------------------------------------------------------------
SUMMARY_SUFFIX = "_summary.json"
CONFIG_SUFFIX = "_config.yaml"  # a run's config sidecar, beside its log
RANK_CONFIG = "config.yaml"  # a run folder's config sidecar (rank 0's)
INDEX_NAME = ".asynclog-index"  # a folder's cache of ls rows (index.py)
MANIFEST = "manifest.json"
SHARDS_ID = "asynclog.shards/1"  # a manifest's "format": a manifest.json of anyone else's is no run folder
SHARD_STEM = r"rank-\d{5,}"  # what shard_stem makes, as a regular expression: ranks past 99999 take more digits
_SHARD = re.compile(rf"rank-(\d{{5,}}){re.escape(SUFFIX)}\Z")


def shard_stem(rank: int) -> str:
    """A rank's name in its run folder: its shard is this plus ``.alog``, its summary this plus
    ``_summary.json``."""
    return f"rank-{rank:05d}"


def shard_name(rank: int) -> str:
    return shard_stem(rank) + SUFFIX


def summary_path(log: str) -> str:
    """The summary sidecar beside the log ``log`` (``x.alog`` -> ``x_summary.json``)."""
    return log.removesuffix(SUFFIX) + SUMMARY_SUFFIX


def config_path(run: str) -> str:
    """The config sidecar of the run at ``run``: ``x_config.yaml`` beside ``x.alog``, or a run folder's
    ``config.yaml``."""
    return os.path.join(run, RANK_CONFIG) if os.path.isdir(run) else run.removesuffix(SUFFIX) + CONFIG_SUFFIX


def read_config(run: str) -> dict | None:
    """The run's config sidecar as a mapping, None when it has none; ConfigError (one line naming the file)
    when it is not a regular file or not a bounded YAML mapping (``asynclog.config.load_yaml``)."""
    from asynclog.config import load_yaml  # yaml is imported only by those who read a config

    path = config_path(run)
    return load_yaml(path) if os.path.lexists(path) else None


# --- opening ------------------------------------------------------------------------------------------------------
class NotARegularFile(OSError):
    """A run's file name holds a FIFO, a socket, a device or (where links are not followed) a link: not read,
    since a FIFO would block its reader forever. A folder is an ``IsADirectoryError``, as ``open`` says."""


class SidecarError(AsyncLogError, ValueError):
    """A summary, a manifest or an index is not what asynclog writes: too large, not JSON, nested too deep, or
    a key the tools read holds the wrong type. The message names the file and why."""


class _Unclaimed(SidecarError):
    """A manifest.json that cannot be told apart from someone else's: not JSON, or nested too deep to read."""


_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: opening a FIFO returns at once
_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "of another kind")


def open_regular(path: str | os.PathLike, follow: bool = True, dir_fd: int | None = None) -> BinaryIO:
    """``path`` opened for reading in binary, once ``fstat`` says it is a regular file; ``NotARegularFile``
    otherwise. ``follow=False`` refuses a link (``O_NOFOLLOW``); ``dir_fd`` opens relative to a folder."""
    try:
        fd = os.open(path, _FLAGS | (0 if follow else os.O_NOFOLLOW), dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise NotARegularFile(errno.ELOOP, "not a regular file (a link, not followed)", os.fsdecode(path)) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fsdecode(path))
        if not stat.S_ISREG(mode):
            raise NotARegularFile(errno.EINVAL, f"not a regular file ({_kind(mode)})", os.fsdecode(path))
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str | os.PathLike, limit: int, follow: bool = False, dir_fd: int | None = None) -> bytes:
    """The whole regular file ``path``; a SidecarError, having read at most ``limit + 1`` bytes, when it is
    larger than ``limit``."""
    with open_regular(path, follow, dir_fd) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise SidecarError(f"{os.path.basename(os.fsdecode(path))} is larger than {limit} bytes, more than "
                           f"asynclog writes")
    return data


# --- a log's header and footer --------------------------------------------------------------------------------------
# A header or footer frame larger than its limit is not read: a header holds a run's config and metadata (KiBs),
# a footer its index too (about 5 bytes a frame: MiBs for a long run).
META_LIMIT = {FrameKind.HEADER: 16 << 20, FrameKind.FOOTER: 64 << 20}


class Peek(NamedTuple):
    """What a log says about itself without reading its data frames."""

    size: int
    version: int
    header: dict  # the header frame's meta
    footer: dict | None  # the footer frame's meta without its index; None when the log has no trailer

    @property
    def closed(self) -> bool:
        """The writer closed the log: a trailer names a sound footer frame that ends where the trailer starts."""
        return self.footer is not None

    @property
    def complete(self) -> bool:
        """Closed, and the footer says the run ended normally."""
        return self.footer is not None and self.footer.get("complete") is True


def frame_meta(f: BinaryIO, header: fmt.FrameHeader) -> tuple[dict, Any]:
    """A header or footer frame's meta, as the map it is and as its kind's typed struct (``format.META_TYPES``);
    a CorruptLogError naming the offset when it is larger than its ``META_LIMIT``, damaged, mistyped, or nested
    deeper than ``MAX_DEPTH`` (an index aside, which is typed to its depth)."""
    what = header.kind.name.lower()
    limit = META_LIMIT[header.kind]
    if header.meta_len + header.body_len > limit:
        raise CorruptLogError(f"{what} frame of {header.size} bytes is larger than {limit} (too large to be real)",
                              header.offset)
    meta, _ = fmt.read_payload(f, header)
    typed = fmt.typed(meta, fmt.META_TYPES[header.kind], header.offset)
    if _deeper({k: v for k, v in meta.items() if k != "index"}, MAX_DEPTH):
        raise CorruptLogError(f"{what} frame meta nests deeper than {MAX_DEPTH} levels", header.offset)
    return meta, typed


def header_meta(f: BinaryIO, version: int) -> dict:
    """The header frame's meta (the preamble read: ``version``); CorruptLogError when the first frame is no
    sound header frame."""
    header = fmt.read_header(f, fmt.PREAMBLE_SIZE, version)
    if header.kind != FrameKind.HEADER:
        raise CorruptLogError("first frame is not a header frame", header.offset)
    return frame_meta(f, header)[0]


def footer_meta(f: BinaryIO, size: int, version: int) -> tuple[int, dict, fmt.FooterMeta] | None:
    """(offset, meta, typed meta) of the footer frame the trailer names, index included; None when there is no
    trailer (the run was not closed); CorruptLogError when the trailer names no sound footer frame ending
    where the trailer starts."""
    offset = fmt.read_trailer(f)
    if offset is None:
        return None
    header = fmt.read_header(f, offset, version)
    if header.kind != FrameKind.FOOTER or header.end != size - fmt.TRAILER_SIZE:
        raise CorruptLogError("the trailer does not point at the footer frame", offset)
    meta, typed = frame_meta(f, header)
    return offset, meta, typed


def header_of(f: BinaryIO) -> dict:
    """The header frame's meta of the open log ``f``, its preamble checked: all ``peek`` reads but the footer."""
    f.seek(0)
    return header_meta(f, fmt.read_preamble(f))


def peek(f: BinaryIO) -> Peek:
    """The preamble, header frame and footer of the open log ``f``: a handful of small reads (the footer's
    index aside). CorruptLogError when any of them fails its checks."""
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    version = fmt.read_preamble(f)
    header = header_meta(f, version)
    found = footer_meta(f, size, version)
    footer = None if found is None else {k: v for k, v in found[1].items() if k != "index"}
    return Peek(size, version, header, footer)


def start_cut(path: str | os.PathLike) -> bool:
    """``path`` is a regular file a power cut left before the run's first bytes reached it (``fmt.start_cut``)."""
    try:
        with open_regular(path) as f:
            return fmt.start_cut(f)
    except OSError:
        return False


def peek_path(path: str | os.PathLike, follow: bool = True, dir_fd: int | None = None) -> Peek:
    """``peek`` of the regular file ``path`` (``open_regular``)."""
    with open_regular(path, follow, dir_fd) as f:
        return peek(f)


def first_frame(path: str | os.PathLike) -> bytes | None:
    """A log's preamble and header frame as stored (``start()`` writes them once, before anything else: a
    run's identity), or None when ``path`` is no regular file or does not begin with them."""
    try:
        with open_regular(path) as f:
            version = fmt.read_preamble(f)
            header = fmt.read_header(f, fmt.PREAMBLE_SIZE, version)
            if header.kind != FrameKind.HEADER or header.size > META_LIMIT[FrameKind.HEADER]:
                return None
            f.seek(0)
            first = f.read(fmt.PREAMBLE_SIZE + header.size)
    except (CorruptLogError, OSError):
        return None
    return first if len(first) == fmt.PREAMBLE_SIZE + header.size else None


def head(path: str | os.PathLike, size: int) -> bytes:
    """The first ``size`` bytes of the regular file ``path``; b"" for anything else or an unreadable one."""
    try:
        with open_regular(path, follow=False) as f:
            return f.read(size)
    except OSError:
        return b""


# --- sidecars ---------------------------------------------------------------------------------------------------------
MAX_DEPTH = 100  # maps and lists within each other: a summary nests about 5 deep, a config perhaps 10
SUMMARY_LIMIT = 64 << 20  # a summary is KiBs; batch statistics of a large run, a few MiB

_any_json = msgspec.json.Decoder()


def _deeper(value: Any, limit: int) -> bool:
    """Whether ``value`` holds maps or lists more than ``limit`` deep (walked without recursion)."""
    todo = [(value, 1)]
    while todo:
        value, depth = todo.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        todo.extend((child, depth + 1) for child in children)
    return False


def _json(data: bytes, name: str) -> Any:
    """JSON of a sidecar, nested at most ``MAX_DEPTH`` deep; a SidecarError naming ``name`` otherwise."""
    try:
        value = _any_json.decode(data)
    except msgspec.DecodeError as exc:
        raise SidecarError(f"{name} is not JSON ({exc})") from None
    except RecursionError:  # msgspec stops at Python's recursion limit
        value = None
        deep = True
    else:
        deep = _deeper(value, MAX_DEPTH)
    if deep:
        raise SidecarError(f"{name} nests deeper than {MAX_DEPTH} levels")
    return value


def checked(value: Any, schema: type, name: str):
    """``value`` (decoded JSON) as ``schema``; a SidecarError naming ``name`` and the key when a key holds the
    wrong type (msgspec says which: ``at `$.timing```)."""
    try:
        return msgspec.convert(value, schema)
    except msgspec.ValidationError as exc:
        raise SidecarError(f"{name}: {exc}") from None


class RunMetadata(msgspec.Struct):
    """The probe's ``run_metadata`` (summary and header frame): the keys the tools read, typed; others kept."""

    checkpoint_path: str | None = None
    checkpoint_name: str | None = None
    local_time: str | None = None
    config_hash: str | None = None
    git_commit: str | None = None
    command: list[Any] | None = None
    environment: dict[str, Any] | None = None


class LoggingCost(msgspec.Struct):
    probe_seconds: float | None = None
    fraction_of_run: float | None = None
    start_seconds: float | None = None
    close_seconds: float | None = None


class Summary(msgspec.Struct):
    """A ``_summary.json`` (probe.py writes it; the writer writes one after a crash): the keys ``ls``,
    ``sweep``, ``show``, ``plot`` and ``export`` read, typed. A section is a map of whatever the probe logged."""

    level: str | None = None
    complete: bool | None = None
    run_metadata: RunMetadata | None = None
    core_results: dict[str, Any] | None = None
    ground_truth: dict[str, Any] | None = None
    timing: dict[str, Any] | None = None
    logging_cost: LoggingCost | None = None
    batch_statistics: dict[str, Any] | None = None
    stats: dict[str, Any] | None = None


class SummaryFile(NamedTuple):
    raw: dict  # the JSON object as it is, every key kept (``show --json`` prints it)
    typed: Summary


def read_summary(path: str | os.PathLike) -> SummaryFile | None:
    """The summary sidecar at ``path``; None when there is none. OSError (``NotARegularFile`` included) when it
    cannot be read, SidecarError when it is not a summary (see ``Summary``)."""
    name = os.path.basename(os.fsdecode(path))
    try:
        data = read_bounded(path, SUMMARY_LIMIT)
    except FileNotFoundError:
        return None
    raw = _json(data, name)
    if not isinstance(raw, dict):
        raise SidecarError(f"{name} is not a JSON object")
    return SummaryFile(raw, checked(raw, Summary, name))


# --- run folders of a job of several ranks ----------------------------------------------------------------------
MAX_WORLD_SIZE = 1 << 20  # ranks a manifest may name: beyond any job run so far (~100,000 GPUs)


def manifest_limit(world_size: int) -> int:
    """The largest manifest.json ``ranks.write_manifest`` writes for ``world_size`` ranks: about 25 bytes a
    rank (one ``"rank-NNNNN.alog",`` line each) and a few KiB for the rest (a name is at most 200 bytes)."""
    return (64 << 10) + 32 * world_size


MANIFEST_LIMIT = manifest_limit(MAX_WORLD_SIZE)  # 32 MiB: a real 50,000-rank job writes 1.15 MB


class Manifest(msgspec.Struct):
    """A run folder's ``manifest.json`` (``ranks.write_manifest``)."""

    format: str
    world_size: Annotated[int, msgspec.Meta(ge=1, le=MAX_WORLD_SIZE)]
    name: str | None = None
    created: float | None = None
    shards: list[str] | None = None


class _Claim(msgspec.Struct):
    format: Any = None


def decode_manifest(data: bytes) -> Manifest | None:
    """The manifest in ``data``; None when it is a JSON object of someone else's (its ``format`` is not
    ``SHARDS_ID``). SidecarError when it is ours but wrong (a wrong type, a world size out of range, a list of
    shards of another length), or cannot be told (not JSON, nested too deep): the message says why."""
    try:
        manifest = msgspec.json.decode(data, type=Manifest)
    except msgspec.ValidationError as exc:
        if _claim(data) != SHARDS_ID:
            return None
        raise SidecarError(f"{MANIFEST}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise _Unclaimed(f"{MANIFEST} is not JSON ({exc})") from None
    except RecursionError:
        raise _Unclaimed(f"{MANIFEST} nests deeper than {MAX_DEPTH} levels") from None
    if manifest.format != SHARDS_ID:
        return None
    if manifest.shards is not None and len(manifest.shards) != manifest.world_size:
        raise SidecarError(f"{MANIFEST} lists {len(manifest.shards)} shards for a world of {manifest.world_size}")
    return manifest


def _claim(data: bytes) -> Any:
    """The ``format`` a manifest claims (None for JSON that is no object); ``_Unclaimed`` when it is not JSON
    at all (a typed decode stops at the first wrong type, before it has read the rest)."""
    try:
        return msgspec.json.decode(data, type=_Claim).format
    except msgspec.ValidationError:
        return None
    except msgspec.DecodeError as exc:
        raise _Unclaimed(f"{MANIFEST} is not JSON ({exc})") from None
    except RecursionError:
        raise _Unclaimed(f"{MANIFEST} nests deeper than {MAX_DEPTH} levels") from None


class RunFolder(NamedTuple):
    """A run folder as found on disk. ``manifest`` is None when it is damaged, and ``problem`` says why;
    ``shards`` maps each rank of the manifest's world that has an entry in the folder (of whatever kind: a
    FIFO is found, and refused when opened) to its file name."""

    path: str
    manifest: Manifest | None
    problem: str | None
    shards: dict[int, str]

    def missing(self) -> str | None:
        """The ranks of the manifest's world without a shard, in one line (ranges: 50,000 missing ranks are
        ``ranks 1-49999 (49999 of 50000): no shard``); None when every rank has one."""
        if self.manifest is None:
            return None
        world = self.manifest.world_size
        gaps, start = [], 0
        for rank in [*sorted(self.shards), world]:
            if rank > start:
                gaps.append((start, rank - 1))
            start = rank + 1
        count = sum(b - a + 1 for a, b in gaps)
        if count == 0:
            return None
        if count == 1:
            return f"rank {gaps[0][0]}: no shard {shard_name(gaps[0][0])}"
        shown = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in gaps[:20])
        more = f", ... ({len(gaps)} stretches)" if len(gaps) > 20 else ""
        return f"ranks {shown}{more} ({count} of {world}): no shard"


def _shards(folder: str, world: int | None) -> dict[int, str]:
    """The shard names in ``folder`` (``rank-NNNNN.alog``, as ``shard_name`` spells them), by rank, below
    ``world`` when given; one ``scandir``, whatever the manifest claims."""
    found = {}
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                match = _SHARD.match(entry.name)
                if match and shard_name(int(match.group(1))) == entry.name:
                    rank = int(match.group(1))
                    if world is None or rank < world:
                        found[rank] = entry.name
    except OSError:
        pass
    return found


def run_folder(path: str | os.PathLike) -> RunFolder | None:
    """The run folder at ``path``; None when it is none: no ``manifest.json``, or one of someone else's. A
    manifest that cannot be read, or not be told apart from someone else's (a FIFO, too large, not JSON), makes
    a damaged run folder when the folder holds shards, and no run folder otherwise."""
    folder = os.fspath(path)
    try:
        data = read_bounded(os.path.join(folder, MANIFEST), MANIFEST_LIMIT)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, SidecarError) as exc:
        return _unclaimed(folder, f"{MANIFEST}: {exc.strerror}" if isinstance(exc, OSError) else str(exc))
    try:
        manifest = decode_manifest(data)
    except _Unclaimed as exc:
        return _unclaimed(folder, str(exc))
    except SidecarError as exc:  # ours, but wrong
        return RunFolder(folder, None, str(exc), _shards(folder, None))
    if manifest is None:
        return None
    return RunFolder(folder, manifest, None, _shards(folder, manifest.world_size))


def _unclaimed(folder: str, why: str) -> RunFolder | None:
    """A folder whose manifest.json cannot be read: a damaged run folder when it holds shards, else none."""
    shards = _shards(folder, None)
    return RunFolder(folder, None, why, shards) if shards else None


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder that ``run_folder`` takes for a run (a damaged one included)."""
    return os.path.isdir(path) and run_folder(path) is not None


def run_files(path: str, name: str) -> list[str]:
    """The files that make up the run at ``path``, named relative to the folder holding it (``name`` is the run's
    name there): what ``index.stamp`` needs to tell that a run changed. A log and its summary; a run folder's
    entries (its manifest, shards and their summaries), its own index aside (a cache, if it was swept alone)."""
    if name.endswith(SUFFIX):
        return [name, name.removesuffix(SUFFIX) + SUMMARY_SUFFIX]
    try:
        return sorted(os.path.join(name, inner) for inner in os.listdir(path) if not inner.startswith(INDEX_NAME))
    except OSError:
        return [name]
