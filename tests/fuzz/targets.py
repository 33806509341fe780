"""Fuzz targets: one function per parser of what someone else may have written, each taking the fuzzer's bytes.

A target writes the bytes where asynclog would find them (a log, a sidecar, a folder's index, a dataset's state,
a config), reads them the way the tools and the reader do, all the way down (every record, tensor and stream
row), and lets through only what the reader documents for a bad file: ``ALLOWED`` (AsyncLogError and its
subclasses; UserWarnings for skipped damage are silenced). Anything else is raised, and the fuzzer reports it
as a finding with the input that caused it; memory and time are bounded by the driver (``run.py``).

Checksums stop most mutations at the first frame, so the ``*_sealed`` targets and those that build a frame
recompute them (``seal``): the fuzzer then reaches the meta, body and index decoders behind the checksums.
The files targets build on (a real log, a run folder's shards) come from ``seeds.py`` (``FUZZ_SEEDS``).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import shutil
import struct
import tempfile
import warnings

from asynclog import cli
from asynclog import _format as fmt
from asynclog.tools.analysis import describe, read_run, row, rows_below, warnings_for
from asynclog.config import read_config
from asynclog.tools.dataset import STATE, export_dataset
from asynclog.errors import AsyncLogError
from asynclog.cli.exits import EXIT_STATUSES
from asynclog.tools.index import INDEX_NAME
from asynclog._ranks import MANIFEST
from asynclog._reader import Log, check
from asynclog._shards import ShardedLog

ALLOWED = (AsyncLogError,)
SEEDS_ENV = "FUZZ_SEEDS"  # the folder seeds.py made: its base/ holds the files targets build on
SCRATCH_ENV = "FUZZ_SCRATCH"  # where inputs are written as files (libFuzzer's exit skips Python's cleanup)

_CRC = struct.Struct("<I")
_HEAD = struct.Struct("<4sBBHIQQ")


def _scratch() -> str:
    """A folder of this process's own, in ``FUZZ_SCRATCH`` or else on tmpfs when there is one: every input is
    written as a real file."""
    where = os.environ.get(SCRATCH_ENV) or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    return tempfile.mkdtemp(prefix="asynclog-fuzz-", dir=where)


SCRATCH = _scratch()


def base(name: str) -> str:
    path = os.path.join(os.environ.get(SEEDS_ENV, ""), "base", name)
    if not os.path.isfile(path):
        raise SystemExit(f"fuzz: no {path}; make the seeds first (python tests/fuzz/seeds.py DIR; {SEEDS_ENV}=DIR)")
    return path


def write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def seal(data: bytes, start: int = fmt.PREAMBLE_SIZE) -> bytes:
    """``data`` with the checksums of its frames made to hold, frame after frame from ``start``, as far as
    frames follow each other (a frame magic where one should start, and its lengths within the data)."""
    data = bytearray(data)
    version = struct.unpack_from("<I", data, 8)[0] if len(data) >= fmt.PREAMBLE_SIZE else fmt.FORMAT_VERSION
    crc = fmt.checksum(version if version in fmt.VERSIONS else fmt.FORMAT_VERSION)
    at = start
    while at + fmt.HEADER_SIZE <= len(data) and data[at : at + 4] == fmt.FRAME_MAGIC:
        _CRC.pack_into(data, at + _HEAD.size, crc(bytes(data[at : at + _HEAD.size])))
        _, _, _, _, meta_len, body_len, _ = _HEAD.unpack_from(data, at)
        end = at + fmt.HEADER_SIZE + meta_len + body_len
        if end + fmt.SUFFIX_SIZE > len(data):
            break
        _CRC.pack_into(data, end, crc(bytes(data[at + fmt.HEADER_SIZE : end])))
        at = end + fmt.SUFFIX_SIZE
    return bytes(data)


def frame(kind: fmt.FrameKind, meta: bytes, body: bytes = b"") -> bytes:
    """A raw frame of ``kind`` holding ``meta`` (msgpack, as the fuzzer left it) and ``body``."""
    prefix = fmt.frame_prefix(kind, fmt.Filter.RAW, 0, meta, len(body), len(body))
    return prefix + body + fmt.frame_suffix(meta, body)


@functools.cache
def frames_before_footer(path: str) -> bytes:
    """A closed log's bytes up to its footer frame: what a footer is appended to."""
    with open(path, "rb") as f:
        offset = fmt.read_trailer(f)
        f.seek(0)
        return f.read(offset)


@functools.cache
def header_and_chunks(path: str) -> bytes:
    """A log's preamble, header frame and stream chunks (lookup tables among them), without its records and
    tensors: what a chunk is read after, at a fraction of the whole log's cost."""
    with open(path, "rb") as f:
        data = f.read()
        kept = [h for h in fmt.walk_frames(f) if isinstance(h, fmt.FrameHeader)
                and (h.offset == fmt.PREAMBLE_SIZE or h.kind == fmt.FrameKind.CHUNK)]
    return data[: fmt.PREAMBLE_SIZE] + b"".join(data[h.offset : h.end] for h in kept)


@contextlib.contextmanager
def quiet():
    """Warnings of skipped damage silenced; stdout and stderr of the console script swallowed."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


# --- reading a log all the way down ------------------------------------------------------------------------
def read_everything(log) -> None:
    """Every record, tensor and stream row of an open Log or ShardedLog."""
    for _ in log.events():
        pass
    for shard in log.shards.values() if isinstance(log, ShardedLog) else [log]:
        for _ in shard.tensors():
            pass
    for name in log.stream_names():
        for _ in log.rows(name):
            pass


def console(*argv: str) -> None:
    """The console script as a user runs it: any exit status it documents, never a traceback."""
    status = cli.main(list(argv))
    if status not in EXIT_STATUSES:
        raise AssertionError(f"asynclog {' '.join(argv)} exited {status}, which it does not document")


def read_log_file(path: str) -> None:
    """What every reader of a log makes of ``path``: open and read it all, verify, cat, show, ls's row."""
    streams = []
    with quiet():
        with contextlib.suppress(*ALLOWED):
            with Log(path) as log:
                read_everything(log)
                for item in log.walk():
                    pass
                streams = log.stream_names()
        check(path)
        console("verify", path)
        console("cat", path)
        for name in streams:
            console("cat", path, "--rows", name)
        console("show", "--json", path)
        facts = read_run(path)
        row(facts)
        describe(facts, warnings_for(facts))


def target_log(data: bytes) -> None:
    """A whole log as found on disk, checksums and all: damage, salvage and the search for the next frame."""
    read_log_file(write(os.path.join(SCRATCH, "fuzz.alog"), data))


def target_log_sealed(data: bytes) -> None:
    """A whole log whose frame checksums are made to hold: the decoders behind them."""
    read_log_file(write(os.path.join(SCRATCH, "fuzz.alog"), seal(data)))


@functools.cache
def first_frame(path: str) -> bytes:
    """A log's preamble and header frame."""
    with open(path, "rb") as f:
        header = fmt.read_header(f, fmt.PREAMBLE_SIZE, fmt.read_preamble(f))
        f.seek(0)
        return f.read(header.end)


def target_frame(data: bytes) -> None:
    """One frame of any kind (checksums made to hold) after a real log's preamble and header frame, the log
    left unclosed."""
    prefix = first_frame(base("plain.alog"))
    read_log_file(write(os.path.join(SCRATCH, "fuzz.alog"), prefix + seal(data, start=0)))


def target_chunk(data: bytes) -> None:
    """One stream chunk: meta length (u32), msgpack meta, raw body; after a real log's header and chunks (its
    lookup tables among them), read through every stream."""
    if len(data) < 4:
        return
    (meta_len,) = struct.unpack_from("<I", data)
    meta, body = data[4 : 4 + meta_len], data[4 + meta_len :]
    prefix = header_and_chunks(base("plain.alog"))
    read_log_file(write(os.path.join(SCRATCH, "fuzz.alog"), prefix + frame(fmt.FrameKind.CHUNK, meta, body)))


def target_footer(data: bytes) -> None:
    """The footer frame's meta (its index above all) of a real closed log: a crafted index must not lead the
    reader to read or allocate what the file does not hold."""
    prefix = frames_before_footer(base("plain.alog"))
    log = prefix + frame(fmt.FrameKind.FOOTER, data) + fmt.trailer(len(prefix))
    read_log_file(write(os.path.join(SCRATCH, "fuzz.alog"), log))


def target_summary(data: bytes) -> None:
    """A ``_summary.json`` beside a real log, as ls, sweep and show read it (they never raise: a bad sidecar
    makes the run damaged)."""
    folder = os.path.join(SCRATCH, "summary")
    if not os.path.isdir(folder):
        os.makedirs(folder)
        shutil.copy(base("demo.alog"), os.path.join(folder, "run.alog"))
    write(os.path.join(folder, "run_summary.json"), data)
    with quiet():
        facts = read_run(os.path.join(folder, "run.alog"))
        row(facts)
        describe(facts, warnings_for(facts))
        console("show", os.path.join(folder, "run.alog"))
        console("show", "--json", os.path.join(folder, "run.alog"))


def target_manifest(data: bytes) -> None:
    """A run folder's ``manifest.json`` beside two real shards: ls's row, and the folder opened and read."""
    folder = os.path.join(SCRATCH, "job")
    if not os.path.isdir(folder):
        os.makedirs(folder)
        for shard in ("rank-00000.alog", "rank-00001.alog"):
            shutil.copy(base(shard), os.path.join(folder, shard))
    write(os.path.join(folder, MANIFEST), data)
    with quiet():
        row(read_run(folder))
        with contextlib.suppress(*ALLOWED):
            with ShardedLog(folder) as log:
                read_everything(log)
                log.batch_statistics()
        console("verify", folder)
        console("ls", folder)


def target_index(data: bytes) -> None:
    """A folder's ``.asynclog-index`` (a cache: whatever it holds, the sweep reads the runs and answers)."""
    folder = os.path.join(SCRATCH, "indexed")
    if not os.path.isdir(folder):
        os.makedirs(folder)
        shutil.copy(base("plain.alog"), os.path.join(folder, "plain.alog"))
    write(os.path.join(folder, INDEX_NAME), data)
    with quiet():
        rows = rows_below(folder)
    if [r["path"] for r in rows] != [os.path.join(folder, "plain.alog")]:
        raise AssertionError(f"a sweep through a crafted index found {rows}")


def target_dataset_state(data: bytes) -> None:
    """A dataset's ``_asynclog_exported.json`` that someone edited: the export reads it, syncs, and removes
    nothing outside its tables (the run it exports least of all)."""
    source, out = os.path.join(SCRATCH, "source"), os.path.join(SCRATCH, "dataset")
    outside = os.path.join(SCRATCH, "outside.txt")
    if not os.path.isdir(source):
        os.makedirs(source)
        shutil.copy(base("plain.alog"), os.path.join(source, "plain.alog"))
        write(outside, b"not the dataset's")
    os.makedirs(out, exist_ok=True)
    write(os.path.join(out, STATE), data)
    with quiet(), contextlib.suppress(*ALLOWED):
        export_dataset(source, out)
    for kept in (outside, os.path.join(source, "plain.alog")):
        if not os.path.isfile(kept):
            raise AssertionError(f"an export with a crafted state removed {kept}")


def target_config(data: bytes) -> None:
    """A config YAML, as ``start(config=path)`` and ``DetailedLogger(config=path)`` read it."""
    path = write(os.path.join(SCRATCH, "config.yaml"), data)
    with contextlib.suppress(*ALLOWED):
        read_config(path)


TARGETS = {name.removeprefix("target_"): fn for name, fn in globals().items() if name.startswith("target_")}
