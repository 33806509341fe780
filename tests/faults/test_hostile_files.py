"""Reading damaged or hostile files: real logs cut, flipped and rewritten with crafted frames.

Whatever the bytes, reading raises nothing but CorruptLogError, never hangs, keeps its memory bounded, and
every value that does come back equals what was logged (tensors bit for bit).
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import io
import json
import random
import subprocess
import sys
import textwrap
import warnings

import msgspec
import pytest
import torch
import zstandard

import asynclog
from asynclog import cli
from asynclog import _format as fmt
from asynclog.errors import CorruptLogError

GiB = 1 << 30


# --- real logs --------------------------------------------------------------------------------------------
def _log_everything(run) -> None:
    for i in range(40):
        run.event("step", i=i, loss=1.0 / (i + 1), note="ok" * (i % 5))
    run.tensor("small", torch.arange(10, dtype=torch.float32))  # inline with the records
    run.tensor("w", torch.randn(20_000))  # staged, stored raw
    run.tensor("w", torch.randn(30, 7))  # the same name twice
    run.tensor("ids", torch.arange(12_000) % 5)  # staged, zstd
    run.tensor("smooth", torch.linspace(0, 1, 20_000, dtype=torch.float64))  # byte-shuffled
    run.tensor("half", torch.randn(9, 3).to(torch.bfloat16))
    run.tensor("mask", torch.rand(17) > 0.5)
    run.tensor("scalar", torch.tensor(3.5))
    stream = run.stream("tokens", chunk_rows=4)
    for i in range(11):
        stream.append(sequence_id=i, tokens=torch.arange(i, dtype=torch.int64), logprobs=torch.full((i,), -0.5))


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> dict[str, str]:
    """A closed log and one its writer closed as incomplete."""
    directory = tmp_path_factory.mktemp("hostile")
    paths = {}
    for name, complete in (("closed", True), ("incomplete", False)):
        config = {"staging_bytes": 4 << 20, "batch_records": 8}  # several records frames
        run = asynclog.start(directory, name=name, level="debug", config=config)
        _log_everything(run)
        paths[name] = run.close(complete=complete, reason=None if complete else "probe died")
    paths["closed, version 1"] = str(directory / "v1.alog")  # what an older writer left: zlib's CRC-32
    write_log(directory / "v1.alog", frames_of(paths["closed"]), version=1)
    return paths


class Original:
    """Everything an intact log holds, to compare what a damaged copy gives back."""

    def __init__(self, path: str):
        with asynclog.open(path) as log:
            assert not log.damaged
            self.events = list(log.events())
            self.tensors = {name: [log.tensor(name, k) for k in range(log.tensor_count(name))]
                            for name in log.tensor_names()}
            self.chunks = {(name, c.index): c.columns for name in log.stream_names() for c in log.stream(name)}
        assert len(self.events) == 40 and len(self.chunks) == 3


@pytest.fixture(scope="module")
def originals(logs) -> dict[str, Original]:
    return {name: Original(path) for name, path in logs.items()}


def _same_tensor(a, b) -> bool:
    flat = lambda t: t.contiguous().reshape(-1).view(torch.uint8)  # noqa: E731 - bit for bit, NaN included
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(flat(a), flat(b))


def _same_columns(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for name in a:
        x, y = a[name], b[name]
        if len(x) != len(y) or not all(_same_tensor(u, v) if isinstance(u, torch.Tensor) else u == v
                                       for u, v in zip(x, y)):
            return False
    return True


def _is_subsequence(part: list, whole: list) -> bool:
    it = iter(whole)
    return all(any(x == y for y in it) for x in part)


def _cat(path) -> tuple[int, bytes, str]:
    """``asynclog cat`` in this process: exit code, stdout bytes, stderr text."""
    out, err = io.BytesIO(), io.StringIO()
    stdout = io.TextIOWrapper(out, encoding="utf-8")
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(err):
        code = cli.main(["cat", str(path)])
        stdout.flush()
    return code, out.getvalue(), err.getvalue()


def read_everything(path, original: Original) -> bool:
    """Open, read every event, tensor and chunk, verify and cat: only CorruptLogError, only true values.
    Return whether any of them noticed damage."""
    noticed = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            log = asynclog.open(path)
        except CorruptLogError:
            log = None
        if log is not None:
            with log:
                _read_log(log, original)
                noticed = bool(log.damaged)
    if asynclog.verify(path)[1]:
        noticed = True
    code, out, err = _cat(path)
    assert code in (0, 1) and (code == 0) == (err == ""), (code, err)
    for line in out.splitlines():
        msgspec.json.decode(line)
    return noticed or code == 1


def _read_log(log, original: Original) -> None:
    events = list(log.events())
    assert _is_subsequence(events, original.events)
    for name in log.tensor_names():
        for which in range(log.tensor_count(name)):
            try:
                tensor = log.tensor(name, which)
            except CorruptLogError:
                continue
            assert any(_same_tensor(tensor, o) for o in original.tensors.get(name, [])), (name, which)
    for name in log.stream_names():
        for chunk in log.stream(name):
            assert _same_columns(chunk.columns, original.chunks[name, chunk.index]), (name, chunk.index)
    for _ in log.frames():
        pass
    repr(log), log.complete, log.stats


# --- random damage ----------------------------------------------------------------------------------------
def _mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    n = len(data)
    how = rng.choice(["cut", "flip", "flips", "smear", "zero", "insert", "delete"])
    at = rng.randrange(n)
    if how == "cut":
        return data[:at], f"cut at {at}"
    out = bytearray(data)
    if how in ("flip", "flips"):
        spots = [rng.randrange(n) for _ in range(1 if how == "flip" else rng.randint(2, 12))]
        for spot in spots:
            out[spot] ^= 1 << rng.randrange(8)
        return bytes(out), f"bits flipped at {spots}"
    length = rng.randint(1, 300)
    if how == "smear":
        out[at:at + length] = rng.randbytes(len(out[at:at + length]))
    elif how == "zero":
        out[at:at + length] = bytes(len(out[at:at + length]))
    elif how == "insert":
        out[at:at] = rng.randbytes(length)
    else:
        del out[at:at + length]
    return bytes(out), f"{how} {length} bytes at {at}"


@pytest.mark.parametrize("which", ["closed", "incomplete", "closed, version 1"])
def test_random_damage_raises_only_corrupt_log_error_and_returns_only_true_values(
        which, logs, originals, tmp_path, full):
    data = open(logs[which], "rb").read()
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    path = tmp_path / "damaged.alog"
    for trial in range(5000 if full else 150):
        damaged, how = _mutate(data, rng)
        path.write_bytes(damaged)
        faulthandler.dump_traceback_later(60, exit=True)  # a hang fails the run with a traceback
        try:
            read_everything(path, originals[which])
        except Exception as exc:
            raise AssertionError(f"seed {seed}, trial {trial}: {how}: {exc!r}") from exc
        finally:
            faulthandler.cancel_dump_traceback_later()


# --- crafted files ----------------------------------------------------------------------------------------
class Frame:
    """One frame of a log, as parts that can be edited and framed again with valid checksums."""

    def __init__(self, kind, meta, stored: bytes, filt=fmt.Filter.RAW, itemsize=0, raw_len=None):
        self.kind, self.meta, self.stored = kind, meta, stored
        self.filter, self.itemsize = filt, itemsize
        self.raw_len = len(stored) if raw_len is None else raw_len

    def encode(self, version: int = fmt.FORMAT_VERSION) -> bytes:
        meta = self.meta if isinstance(self.meta, bytes) else fmt.encode_meta(self.meta)
        prefix = fmt.frame_prefix(self.kind, self.filter, self.itemsize, meta, len(self.stored), self.raw_len,
                                  version)
        return prefix + self.stored + fmt.frame_suffix(meta, self.stored, version)


def frames_of(path) -> list[Frame]:
    frames = []
    with open(path, "rb") as f:
        for h in fmt.scan_frames(f):
            meta, stored = fmt.read_payload(f, h)
            frames.append(Frame(h.kind, meta, stored, h.filter, h.itemsize, h.raw_len))
    return frames


def write_log(path, frames: list[Frame], footer: bool = True, edit_index=None,
              version: int = fmt.FORMAT_VERSION) -> None:
    """Frame again, with the footer's index rebuilt from where the frames now lie (then ``edit_index``), as a
    file of format ``version``."""
    out = bytearray(fmt.preamble(version))
    index = {"records": [], "tensors": {}, "streams": {}}
    footer_meta = {"complete": True, "reason": None, "closed": 0.0, "stats": {}, "index": index}
    for frame in frames:
        if frame.kind == fmt.FrameKind.FOOTER:
            footer_meta = {**frame.meta, "index": index}
            continue
        meta = frame.meta if isinstance(frame.meta, dict) else {}
        if frame.kind == fmt.FrameKind.RECORDS:
            index["records"].append(len(out))
        elif frame.kind == fmt.FrameKind.TENSOR and isinstance(meta.get("tid"), int):
            index["tensors"].setdefault(str(meta.get("name")), {}).setdefault(meta["tid"], []).append(len(out))
        elif frame.kind == fmt.FrameKind.CHUNK:
            index["streams"].setdefault(str(meta.get("stream")), []).append(len(out))
        out += frame.encode(version)
    index["tensors"] = {name: list(by_tid.values()) for name, by_tid in index["tensors"].items()}
    if footer:
        if edit_index is not None:
            edit_index(footer_meta["index"])
        at = len(out)
        out += Frame(fmt.FrameKind.FOOTER, footer_meta, b"").encode(version) + fmt.trailer(at)
    path.write_bytes(bytes(out))


@pytest.mark.parametrize("version", [0, 3, 0xFFFFFFFF])
def test_a_file_of_an_unknown_format_version_is_a_clear_error(version, logs, tmp_path):
    path = tmp_path / "unknown.alog"
    data = bytearray(open(logs["closed"], "rb").read())
    data[8:12] = version.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    said = f"format version {version}, which this asynclog does not read (it reads versions 1 and 2)"
    said += "; a newer asynclog wrote it" if version > 2 else ""
    with pytest.raises(CorruptLogError) as raised:
        asynclog.open(path)
    assert str(raised.value) == f"{said} at offset 8"
    assert asynclog.verify(path) == (0, [f"{said} at offset 8 ({len(data)} bytes)"])
    code, out, err = _cat(path)
    assert code == 1 and out == b"" and said in err


@functools.lru_cache(maxsize=None)
def _zstd_bomb(size: int, content_size: bool = True) -> bytes:
    """A small zstd frame that expands to ``size`` zero bytes, built without holding them."""
    c = zstandard.ZstdCompressor().compressobj(size=size if content_size else -1)
    chunk = bytes(1 << 20)
    parts = [c.compress(chunk) for _ in range(size >> 20)]
    return b"".join(parts) + c.flush()


def _first(frames: list[Frame], kind, **where) -> Frame:
    return next(f for f in frames if f.kind == kind and all(f.meta.get(k) == v for k, v in where.items()))


_MISSING = object()


def _change(mapping: dict, changes: dict) -> None:
    for key, value in changes.items():
        if value is _MISSING:
            mapping.pop(key)
        else:
            mapping[key] = value


def _edit_meta(**changes):
    def edit(frame: Frame) -> None:
        _change(frame.meta, changes)
    return edit


def _bomb(raw_len: int, content_size: bool = True):
    def edit(frame: Frame) -> None:
        frame.filter, frame.stored, frame.raw_len = fmt.Filter.ZSTD, _zstd_bomb(GiB, content_size), raw_len
    return edit


def _set(**fields):
    def edit(frame: Frame) -> None:
        for key, value in fields.items():
            setattr(frame, key, value)
    return edit


def _edit_column(**changes):
    def edit(frame: Frame) -> None:
        _change(next(c for c in frame.meta["columns"] if c["kind"] == "tensor"), changes)
    return edit


def _empty_tensor(shape):
    """The tensor's one piece emptied, its shape ``shape`` (of no elements)."""
    def edit(frame: Frame) -> None:
        _set(filter=fmt.Filter.RAW, stored=b"", raw_len=0)(frame)
        _change(frame.meta, {"shape": shape, "nbytes": 0})
    return edit


def _empty_cells(shapes):
    """The chunk's tensor column of ``shapes`` (each of no elements) and no bytes."""
    def edit(frame: Frame) -> None:
        _edit_column(shapes=shapes, nbytes=0)(frame)
    return edit


# (what the crafted frame is, which frame to pick, how to change it)
CRAFTED = {
    "records bomb declaring 1 GiB": (fmt.FrameKind.RECORDS, {}, _bomb(GiB)),
    "records bomb declaring 1 MiB": (fmt.FrameKind.RECORDS, {}, _bomb(1 << 20)),
    "records bomb without content size": (fmt.FrameKind.RECORDS, {}, _bomb(1 << 20, content_size=False)),
    "records body is not a list": (fmt.FrameKind.RECORDS, {}, _set(stored=fmt.encode_meta({"a": 1}))),
    "records are not maps": (fmt.FrameKind.RECORDS, {}, _set(stored=fmt.encode_meta([1, 2, 3]))),
    "records meta is not a map": (fmt.FrameKind.RECORDS, {}, _set(meta=fmt.encode_meta([1]))),
    "records meta is not msgpack": (fmt.FrameKind.RECORDS, {}, _set(meta=b"\xc1\xc1")),
    "raw body shorter than raw_len": (fmt.FrameKind.RECORDS, {}, _set(filter=fmt.Filter.RAW, raw_len=1 << 40)),
    "shuffle with item size 0": (fmt.FrameKind.TENSOR, {"name": "smooth"}, _set(itemsize=0)),
    "shuffle with item size 3": (fmt.FrameKind.TENSOR, {"name": "smooth"}, _set(itemsize=3)),
    "zstd content size disagrees": (fmt.FrameKind.TENSOR, {"name": "ids"}, _set(raw_len=8)),
    "zstd body is junk": (fmt.FrameKind.TENSOR, {"name": "ids"}, _set(filter=fmt.Filter.ZSTD, stored=b"junk")),
    "tensor declaring 2 GiB": (fmt.FrameKind.TENSOR, {"name": "small"},
                               _edit_meta(shape=[1 << 29], nbytes=2 * GiB)),
    "tensor nbytes disagrees with shape": (fmt.FrameKind.TENSOR, {"name": "small"}, _edit_meta(shape=[11])),
    "tensor shape is a string": (fmt.FrameKind.TENSOR, {"name": "small"}, _edit_meta(shape="abc")),
    "tensor shape is negative": (fmt.FrameKind.TENSOR, {"name": "small"}, _edit_meta(shape=[-10], nbytes=-40)),
    "tensor dtype is not a dtype": (fmt.FrameKind.TENSOR, {"name": "small"}, _edit_meta(dtype="Tensor")),
    "tensor dtype is unknown": (fmt.FrameKind.TENSOR, {"name": "small"}, _edit_meta(dtype="float99")),
    "tensor dtype is an int": (fmt.FrameKind.TENSOR, {"name": "small"}, _edit_meta(dtype=7)),
    "tensor without tid": (fmt.FrameKind.TENSOR, {"name": "small"}, _edit_meta(tid=_MISSING)),
    "tensor piece offset past its end": (fmt.FrameKind.TENSOR, {"name": "small"}, _edit_meta(offset=1 << 62)),
    "tensor piece offset negative": (fmt.FrameKind.TENSOR, {"name": "small"}, _edit_meta(offset=-4)),
    "tensor with no pieces": (fmt.FrameKind.TENSOR, {"name": "small"}, _edit_meta(pieces=0)),
    "tensor with too many pieces": (fmt.FrameKind.TENSOR, {"name": "small"}, _edit_meta(pieces=1 << 40)),
    "tensor with a huge int": (fmt.FrameKind.TENSOR, {"name": "small"}, _edit_meta(nbytes=(1 << 64) - 1)),
    # Shapes of no bytes whose sizes or strides torch cannot hold in 64 bits (found writing the fuzz targets)
    "tensor of no bytes, a dim past int64": (fmt.FrameKind.TENSOR, {"name": "small"},
                                             _empty_tensor(shape=[0, 1 << 63])),
    "tensor of no bytes, strides past int64": (fmt.FrameKind.TENSOR, {"name": "small"},
                                               _empty_tensor(shape=[0, 1 << 40, 1 << 40])),
    "chunk cells of no bytes, a dim past int64": (fmt.FrameKind.CHUNK, {"chunk": 1},
                                                  _empty_cells(shapes=[[0, 1 << 63]] * 4)),
    "chunk cells of no bytes, strides past int64": (fmt.FrameKind.CHUNK, {"chunk": 1},
                                                    _empty_cells(shapes=[[1 << 40, 1 << 40, 0]] * 4)),
    "chunk column shapes disagree with bytes": (fmt.FrameKind.CHUNK, {"chunk": 1},
                                                _edit_column(shapes=[[1000]] * 4)),
    "chunk column offset out of range": (fmt.FrameKind.CHUNK, {"chunk": 1}, _edit_column(offset=1 << 40)),
    "chunk column dtype unknown": (fmt.FrameKind.CHUNK, {"chunk": 1}, _edit_column(dtype="nope")),
    "chunk column shapes missing": (fmt.FrameKind.CHUNK, {"chunk": 1}, _edit_column(shapes=_MISSING)),
    "chunk column kind unknown": (fmt.FrameKind.CHUNK, {"chunk": 1}, _edit_column(kind="weird")),
    "chunk rows disagree": (fmt.FrameKind.CHUNK, {"chunk": 1}, _edit_meta(rows=3)),
    "chunk columns not a list": (fmt.FrameKind.CHUNK, {"chunk": 1}, _edit_meta(columns={"a": 1})),
    "chunk without stream": (fmt.FrameKind.CHUNK, {"chunk": 1}, _edit_meta(stream=_MISSING)),
    "header config is junk": (fmt.FrameKind.HEADER, {}, _edit_meta(config={"staging_bytes": "lots"})),
    "header meta is a list": (fmt.FrameKind.HEADER, {}, _set(meta=fmt.encode_meta([]))),
}
def _crafted(path, original_path, name: str, footer: bool = True) -> None:
    kind, where, edit = CRAFTED[name]
    frames = frames_of(original_path)
    frame = _first(frames, kind, **where)
    frame.meta = msgspec.msgpack.decode(fmt.encode_meta(frame.meta))  # a copy
    edit(frame)
    write_log(path, frames, footer=footer)


@pytest.mark.parametrize("footer", [True, False], ids=["indexed", "scanned"])
@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_frame_is_a_corrupt_log_error_and_spares_the_rest(name, footer, logs, originals, tmp_path):
    path = tmp_path / "crafted.alog"
    _crafted(path, logs["closed"], name, footer)
    noticed = read_everything(path, originals["closed"])
    assert noticed or name == "header config is junk"


FOOTERS = {
    "records offset 0": lambda index: index["records"].__setitem__(0, 0),
    "records offset inside a frame": lambda index: index["records"].__setitem__(0, index["records"][0] + 7),
    "records offset past the end": lambda index: index["records"].__setitem__(0, 1 << 62),
    "records offset negative": lambda index: index["records"].__setitem__(0, -5),
    "tensor offset at a chunk": lambda index: index["tensors"]["w"][0].__setitem__(0, index["streams"]["tokens"][1]),
    "tensor pieces repeated": lambda index: index["tensors"]["w"][0].append(index["tensors"]["w"][0][0]),
    "tensor group empty": lambda index: index["tensors"]["w"].append([]),
    "stream offsets not ints": lambda index: index["streams"].__setitem__("tokens", ["a"]),
    "index missing": lambda index: index.clear(),
    "index of the wrong types": lambda index: index.update(records={"a": 1}, tensors=[], streams=3),
}


@pytest.mark.parametrize("name", list(FOOTERS))
def test_crafted_footer_index_is_checked_and_a_bad_one_falls_back_to_scanning(name, logs, originals, tmp_path):
    path = tmp_path / "crafted.alog"
    write_log(path, frames_of(logs["closed"]), edit_index=FOOTERS[name])
    read_everything(path, originals["closed"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with asynclog.open(path) as log:
            assert len(list(log.events())) >= 32  # one records frame (8 events) at most is lost to a bad offset


# --- bounded memory ---------------------------------------------------------------------------------------
_PEAK = """
import json, sys, warnings
import torch  # loaded before measuring: the tensor path imports it
from asynclog import cli
from asynclog import _reader as reader
from asynclog.errors import CorruptLogError

def status_kib(field):
    # VmHWM, not ru_maxrss: ru_maxrss keeps the parent's peak across fork and exec
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

def rss_kib():
    return status_kib("VmRSS")

path, what = sys.argv[1], sys.argv[2]
before = rss_kib()
warnings.simplefilter("ignore")
try:
    if what == "read":
        with reader.Log(path) as log:
            list(log.events())
            for name in log.tensor_names():
                for which in range(log.tensor_count(name)):
                    try:
                        log.tensor(name, which)
                    except CorruptLogError:
                        pass
            for name in log.stream_names():
                list(log.stream(name))
    elif what == "verify":
        reader.verify(path)
    else:
        sys.stdout = open("/dev/null", "w")
        cli.main(["cat", path])
    error = None
except Exception as exc:
    error = repr(exc)
peak = status_kib("VmHWM")
print(json.dumps({"grew_mib": (peak - before) / 1024, "error": error}), file=sys.stderr)
"""


def _peak_growth(path, what: str) -> dict:
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(_PEAK), str(path), what],
                         capture_output=True, text=True, timeout=120)
    return json.loads(res.stderr.strip().splitlines()[-1])


_BOMB = "records bomb declaring 1 GiB"


@pytest.mark.parametrize("name, what", [(_BOMB, "read"), (_BOMB, "verify"), (_BOMB, "cat"),
                                        ("tensor declaring 2 GiB", "read")])
def test_crafted_sizes_do_not_make_reading_allocate_them(name, what, logs, tmp_path):
    path = tmp_path / "bomb.alog"
    _crafted(path, logs["closed"], name, footer=True)
    result = _peak_growth(path, what)
    assert result["error"] is None and result["grew_mib"] < 256, result


def test_bad_chunk_is_skipped_with_a_warning_naming_it_or_raised_on_request(logs, originals, tmp_path):
    path = tmp_path / "chunk.alog"
    _crafted(path, logs["closed"], "chunk column shapes disagree with bytes")
    with asynclog.open(path) as log:
        offset = log._streams["tokens"][1]
        with pytest.warns(UserWarning, match=f"chunk 1 of stream 'tokens'.*offset {offset}"):
            chunks = list(log.stream("tokens"))
        assert [c.index for c in chunks] == [0, 2]
        assert [d.offset for d in log.damaged] == [offset]
        with pytest.raises(CorruptLogError, match=f"offset {offset}"):
            list(log.stream("tokens", errors="raise"))


_UNDER_A_LIMIT = """
import resource, sys, warnings
import torch  # loaded before the limit: the tensor path imports it
from asynclog import _reader as reader
from asynclog.errors import CorruptLogError

def address_space():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmSize:"))

limit = address_space() + (2 << 30)  # 2 GiB more than this process holds now
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
warnings.simplefilter("ignore")
try:
    with reader.Log(sys.argv[1]) as log:
        log.tensor(sys.argv[2])
    print("read")
except CorruptLogError as exc:
    print("CorruptLogError:", exc)
except MemoryError:
    print("MemoryError")
"""


def test_a_tensor_piece_declaring_more_than_a_frame_holds_is_refused_before_its_tensor_is_allocated(logs, tmp_path):
    """A small file whose tensor (shape, nbytes and its one piece's raw length agreeing) declares 3 GiB: read
    under an address-space limit 2 GiB above what the reader holds, it is a CorruptLogError naming the frame's
    limit, not a MemoryError of allocating 3 GiB before the piece's size was checked."""
    frames = frames_of(logs["closed"])
    piece = _first(frames, fmt.FrameKind.TENSOR, name="small")
    piece.meta = {**piece.meta, "shape": [3 * GiB // 4], "nbytes": 3 * GiB}
    piece.raw_len = 3 * GiB
    path = tmp_path / "declares_3_gib.alog"
    write_log(path, frames)
    assert path.stat().st_size < 1 << 20
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_UNDER_A_LIMIT), str(path), "small"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("CorruptLogError:"), done.stdout + done.stderr[-2000:]
    assert "more than this run writes in one frame" in done.stdout
