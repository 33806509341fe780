"""The file format: decodable from docs/FORMAT.md alone, damage found and located, cuts salvaged."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import sys
import zlib

import msgspec
import numpy as np
import pytest
import torch
import zstandard

import asynclog
from asynclog import _format as fmt


@pytest.fixture(scope="module")
def sample_log(tmp_path_factory):
    """A closed log with records, raw and compressed tensors, a shuffled one, and a stream."""
    directory = tmp_path_factory.mktemp("fmt")
    with asynclog.start(directory, name="sample", level="debug") as run:
        for i in range(30):
            run.event("step", i=i, loss=1.0 / (i + 1), text="δH₁ ✓")
        run.tensor("random", torch.randn(100_000))  # incompressible: stored raw
        run.tensor("ids", torch.arange(200_000) % 7)  # compresses
        run.tensor("smooth", torch.linspace(0, 1, 100_000, dtype=torch.float64))  # shuffle pays
        run.tensor("bf16", torch.randn(10, 10).to(torch.bfloat16))
        stream = run.stream("tokens", chunk_rows=4)
        for i in range(10):
            stream.append(sequence_id=i, tokens=torch.arange(i, dtype=torch.int64), logprobs=torch.full((i,), -1.5))
    return run.path


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ (0x82F63B78 if n & 1 else 0)
        table.append(n)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C as docs/FORMAT.md names it (Castagnoli, reflected 0x82F63B78), a byte at a time: no package."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _read_standalone(path) -> dict:
    """Decode a log by following docs/FORMAT.md with only struct, zstandard, msgpack and numpy."""
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    data = open(path, "rb").read()
    assert data[:8] == b"ASYNCLOG" and struct.unpack_from("<I", data, 8)[0] == 2
    out = {"records": [], "tensors": {}, "chunks": [], "footer": None}
    pieces: dict[int, list] = {}
    pos = 16
    while pos < len(data):
        if data[pos:pos + 4] != b"ALFR":
            assert data[pos + 8:pos + 16] == b"ALFOOTER" and len(data) - pos == 16
            break
        magic, kind, filt, itemsize, meta_len, body_len, raw_len, crc = struct.unpack_from("<4sBBHIQQI", data, pos)
        assert crc == crc32c(data[pos:pos + 28])
        meta_at = pos + 32
        meta = msgspec.msgpack.decode(data[meta_at:meta_at + meta_len])
        stored = data[meta_at + meta_len:meta_at + meta_len + body_len]
        (payload_crc,) = struct.unpack_from("<I", data, meta_at + meta_len + body_len)
        assert payload_crc == crc32c(data[meta_at:meta_at + meta_len + body_len])
        body = stored if filt == 0 else zstandard.ZstdDecompressor().decompress(stored)
        if filt == 2:
            body = np.frombuffer(body, np.uint8).reshape(itemsize, -1).T.tobytes()
        assert len(body) == raw_len
        if kind == 2:
            out["records"] += msgspec.msgpack.decode(body)
        elif kind == 3:
            pieces.setdefault(meta["tid"], []).append((meta, body))
        elif kind == 4:
            out["chunks"].append((meta, body))
        elif kind == 5:
            out["footer"] = meta
        pos = meta_at + meta_len + body_len + 4
    numpy_dtype = {"bfloat16": np.uint16}
    for parts in pieces.values():
        meta = parts[0][0]
        raw = b"".join(body for _, body in sorted(parts, key=lambda p: p[0]["offset"]))
        dtype = numpy_dtype.get(meta["dtype"]) or np.dtype(meta["dtype"])
        out["tensors"][meta["name"]] = np.frombuffer(raw, dtype).reshape(meta["shape"])
    return out


def test_log_decodes_with_only_zstandard_msgpack_and_numpy(sample_log):
    got = _read_standalone(sample_log)
    assert [r["data"]["i"] for r in got["records"]] == list(range(30))
    assert got["records"][3]["data"]["text"] == "δH₁ ✓"
    with asynclog.open(sample_log) as log:
        for name in ("random", "ids", "smooth"):
            assert np.array_equal(got["tensors"][name], log.tensor(name).numpy())
        assert np.array_equal(got["tensors"]["bf16"], log.tensor("bf16").view(torch.uint16).numpy())
    meta, body = got["chunks"][-1]
    tokens = next(c for c in meta["columns"] if c["name"] == "tokens")
    flat = np.frombuffer(body[tokens["offset"]:tokens["offset"] + tokens["nbytes"]], np.int64)
    assert flat.tolist() == list(range(8)) + list(range(9))  # rows 8 and 9
    assert got["footer"]["complete"] is True


def _with_checksums(data: bytes, version: int, crc) -> bytes:
    """The same log as a file of ``version`` whose checksums are ``crc``: preamble and every frame's two
    checksums rewritten by docs/FORMAT.md (frames keep their lengths, so the footer's offsets still hold)."""
    out = bytearray(data)
    struct.pack_into("<I", out, 8, version)
    pos = 16
    while pos < len(out) and out[pos:pos + 4] == b"ALFR":
        meta_len, body_len = struct.unpack_from("<IQ", out, pos + 8)
        struct.pack_into("<I", out, pos + 28, crc(bytes(out[pos:pos + 28])))
        end = pos + 32 + meta_len + body_len
        struct.pack_into("<I", out, end, crc(bytes(out[pos + 32:end])))
        pos = end + 4
    return bytes(out)


def _contents(path) -> tuple:
    with asynclog.open(path) as log:
        tensors = {name: log.tensor(name).view(torch.uint8).numpy().tobytes() for name in log.tensor_names()}
        rows = list(log.rows("tokens"))
        return log.format_version, list(log.events()), tensors, len(rows), log.damaged, log.complete


def test_the_checksum_follows_the_files_version(sample_log, tmp_path):
    """Version 2 files use CRC-32C; version 1 files (zlib's CRC-32) are still read, and not the other way round."""
    data = open(sample_log, "rb").read()
    version, *held = _contents(sample_log)
    assert version == 2 and held[-2:] == [[], True]
    v1 = tmp_path / "v1.alog"
    v1.write_bytes(_with_checksums(data, 1, zlib.crc32))
    assert _contents(v1) == (1, *held)
    assert asynclog.verify(v1) == asynclog.verify(sample_log)
    for version, crc in ((1, crc32c), (2, zlib.crc32)):  # a checksum of the other version is damage
        crossed = tmp_path / f"crossed{version}.alog"
        crossed.write_bytes(_with_checksums(data, version, crc))
        frames, problems = asynclog.verify(crossed)
        assert frames == 0 and problems[0].startswith(f"frame header checksum mismatch at offset {fmt.PREAMBLE_SIZE}")


def test_a_flipped_byte_in_a_version_1_file_is_found_and_located(sample_log, tmp_path):
    v1 = bytearray(_with_checksums(open(sample_log, "rb").read(), 1, zlib.crc32))
    with open(sample_log, "rb") as f:
        victim = [h for h in fmt.scan_frames(f) if h.kind == fmt.FrameKind.TENSOR][1]
    v1[victim.end - 10] ^= 0x10
    path = tmp_path / "v1.alog"
    path.write_bytes(bytes(v1))
    _, problems = asynclog.verify(path)
    assert problems == [f"frame payload checksum mismatch at offset {victim.offset} ({victim.size} bytes)"]
    with asynclog.open(path) as log:
        assert log.format_version == 1 and len(list(log.events())) == 30


def test_writer_picks_a_filter_per_frame(sample_log):
    with asynclog.open(sample_log) as log:
        filters = {m["name"]: h.filter for h, m in log.frames() if h.kind == fmt.FrameKind.TENSOR}
        records = [h.filter for h, _ in log.frames() if h.kind == fmt.FrameKind.RECORDS]
    assert filters["random"] == fmt.Filter.RAW
    assert filters["ids"] == fmt.Filter.ZSTD
    assert filters["smooth"] == fmt.Filter.SHUFFLE_ZSTD
    assert records == [fmt.Filter.ZSTD]


def _frame_ends(path) -> list[int]:
    with open(path, "rb") as f:
        return [h.end for h in fmt.scan_frames(f)]


def test_truncation_at_every_frame_boundary_keeps_every_whole_frame(sample_log, tmp_path):
    ends = _frame_ends(sample_log)
    data = open(sample_log, "rb").read()
    previous = -1
    for end in ends:
        cut = tmp_path / "cut.alog"
        cut.write_bytes(data[:end])
        with asynclog.open(cut) as log:
            records = len(list(log.events()))
            assert log.cut_at is None  # a clean cut at a boundary: nothing damaged, just no footer
            assert records >= previous
            previous = records
            for name in log.tensor_names():
                log.tensor(name)  # every indexed tensor is whole
    assert previous == 30


def test_truncation_at_random_offsets_reports_where_the_log_was_cut(sample_log, tmp_path, full):
    data = open(sample_log, "rb").read()
    ends = _frame_ends(sample_log)
    rng = random.Random(7)
    for offset in rng.sample(range(fmt.PREAMBLE_SIZE + 40, len(data) - 17), 400 if full else 40):
        cut = tmp_path / "cut.alog"
        cut.write_bytes(data[:offset])
        with asynclog.open(cut) as log:
            assert not log.complete
            # The end of the last whole frame; for a cut inside the header frame, the end of the preamble.
            last_whole = max([fmt.PREAMBLE_SIZE, *(e for e in ends if e <= offset)])
            assert log.cut_at == (last_whole if offset not in ends else None)
            list(log.events())
        frames, problems = asynclog.verify(cut)
        assert problems and str(last_whole) in problems[0]


def test_flipped_byte_is_detected_and_located(sample_log, tmp_path, full):
    data = bytearray(open(sample_log, "rb").read())
    with open(sample_log, "rb") as f:
        headers = list(fmt.scan_frames(f))
    rng = random.Random(11)
    for _ in range(300 if full else 40):
        frame = rng.choice(headers)
        position = rng.randrange(frame.offset, frame.end)
        damaged = bytearray(data)
        damaged[position] ^= 1 << rng.randrange(8)
        path = tmp_path / "flip.alog"
        path.write_bytes(damaged)
        _, problems = asynclog.verify(path)
        assert problems and f"offset {frame.offset}" in problems[0], (position, problems)


def test_cli_verify_names_the_first_bad_offset_and_cat_prints_json_lines(sample_log, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "asynclog", "verify", sample_log], capture_output=True, text=True)
    assert ok.returncode == 0 and "OK" in ok.stdout
    with open(sample_log, "rb") as f:
        victim = [h for h in fmt.scan_frames(f) if h.kind == fmt.FrameKind.TENSOR][1]
    damaged = bytearray(open(sample_log, "rb").read())
    damaged[victim.end - 10] ^= 0xFF
    bad = tmp_path / "bad.alog"
    bad.write_bytes(damaged)
    res = subprocess.run([sys.executable, "-m", "asynclog", "verify", str(bad)], capture_output=True, text=True)
    assert res.returncode == 1 and f"offset {victim.offset}" in res.stderr
    cat = subprocess.run([sys.executable, "-m", "asynclog", "cat", sample_log], capture_output=True, text=True)
    lines = [msgspec.json.decode(line) for line in cat.stdout.splitlines()]
    types = [line["type"] for line in lines]
    assert types[0] == "header" and types[-1] == "footer"
    assert types.count("event") == 30 and types.count("tensor") == 4 and types.count("chunk") == 3
    assert "index" not in lines[-1]


def test_cli_verify_exits_2_for_a_log_without_footer(sample_log, tmp_path):
    ends = _frame_ends(sample_log)
    cut = tmp_path / "nofooter.alog"
    cut.write_bytes(open(sample_log, "rb").read()[:ends[-2]])
    res = subprocess.run([sys.executable, "-m", "asynclog", "verify", str(cut)], capture_output=True, text=True)
    assert res.returncode == 2 and "no footer" in res.stderr


def _torn(sample_log, out, tear: str) -> int:
    """Write to ``out`` the sample log as a power loss leaves it while its last frame is being written: no
    footer, and that frame cut short or zero-filled (the file's length reached the disk, its blocks did not).
    Return the last frame's offset."""
    ends = _frame_ends(sample_log)
    data, last = open(sample_log, "rb").read()[:ends[-2]], ends[-3]  # ends[-2]: the last frame before the footer
    if tear == "cut short":
        out.write_bytes(data[:last + (len(data) - last) // 2])
    else:
        out.write_bytes(data[:last] + bytes(len(data) - last))
    return last


@pytest.mark.parametrize("tear", ["cut short", "zero-filled"])
def test_verify_calls_a_log_whose_last_frame_a_crash_tore_incomplete_not_damaged(sample_log, tmp_path, tear):
    torn = tmp_path / "torn.alog"
    last = _torn(sample_log, torn, tear)
    res = subprocess.run([sys.executable, "-m", "asynclog", "verify", str(torn)], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert "no footer" in res.stderr and f"offset {last}" in res.stderr and "damaged" not in res.stderr
    frames, problems = asynclog.verify(torn)
    assert len(problems) == 1 and f"offset {last}" in problems[0]


def test_verify_calls_damage_before_a_torn_last_frame_damage(sample_log, tmp_path):
    torn = tmp_path / "torn.alog"
    _torn(sample_log, torn, "cut short")
    with open(sample_log, "rb") as f:
        victim = [h for h in fmt.scan_frames(f) if h.kind == fmt.FrameKind.TENSOR][1]
    bad = tmp_path / "bad.alog"
    _damage(torn, bad, victim.end - 10)
    res = subprocess.run([sys.executable, "-m", "asynclog", "verify", str(bad)], capture_output=True, text=True)
    assert res.returncode == 1 and f"damaged at offset {victim.offset}" in res.stderr
    assert res.stderr.count("damaged at") == 1  # the torn last frame is not damage


def test_a_torn_last_frame_is_where_the_reader_says_the_log_was_cut_and_not_damage(sample_log, tmp_path):
    torn = tmp_path / "torn.alog"
    last = _torn(sample_log, torn, "zero-filled")
    with asynclog.open(torn) as log:
        assert not log.complete and log.cut_at == last and log.damaged == []
        assert len(list(log.events())) == 30 and len(list(log.frames())) > 1
        assert log.damaged == []
    cat = subprocess.run([sys.executable, "-m", "asynclog", "cat", str(torn)], capture_output=True, text=True)
    assert cat.returncode == 0 and cat.stderr == ""  # as for any log that was not closed
    assert [msgspec.json.decode(line)["type"] for line in cat.stdout.splitlines()].count("event") == 30


def test_unknown_frame_kind_is_skipped_by_its_lengths(sample_log, tmp_path):
    data = open(sample_log, "rb").read()
    ends = _frame_ends(sample_log)
    head = struct.pack("<4sBBHIQQ", b"ALFR", 42, 0, 0, 0, 3, 3)
    future = head + struct.pack("<I", crc32c(head)) + b"new" + struct.pack("<I", crc32c(b"new"))
    path = tmp_path / "future.alog"
    path.write_bytes(data[:ends[0]] + future + data[ends[0]:ends[-2]])
    with asynclog.open(path) as log:
        assert len(list(log.events())) == 30 and log.cut_at is None


def test_not_a_log_is_a_clear_error(tmp_path):
    path = tmp_path / "x.alog"
    path.write_bytes(b"hello world, not a log at all")
    with pytest.raises(asynclog.CorruptLogError, match="not an asynclog file"):
        asynclog.open(path)
    shutil.copy(__file__, path)
    with pytest.raises(asynclog.CorruptLogError):
        asynclog.open(path)


def _damage(path, out, at: int) -> None:
    data = bytearray(open(path, "rb").read())
    data[at] ^= 0xFF
    out.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["payload", "header"])
def test_cat_prints_the_frames_after_a_damaged_one_and_says_what_it_skipped(sample_log, tmp_path, where):
    with open(sample_log, "rb") as f:
        victim = [h for h in fmt.scan_frames(f) if h.kind == fmt.FrameKind.TENSOR][1]
    bad = tmp_path / "bad.alog"
    _damage(sample_log, bad, victim.end - 10 if where == "payload" else victim.offset + 9)
    cat = subprocess.run([sys.executable, "-m", "asynclog", "cat", str(bad)], capture_output=True, text=True)
    assert cat.returncode == 1
    assert f"offset {victim.offset}" in cat.stderr and f"{victim.size} bytes" in cat.stderr
    types = [msgspec.json.decode(line)["type"] for line in cat.stdout.splitlines()]
    assert types.count("event") == 30 and types.count("tensor") == 3 and types.count("chunk") == 3
    assert types[-1] == "footer"


def test_scan_indexes_the_frames_after_a_damaged_one(sample_log, tmp_path):
    ends = _frame_ends(sample_log)
    with open(sample_log, "rb") as f:
        victim = [h for h in fmt.scan_frames(f) if h.kind == fmt.FrameKind.TENSOR][1]
    unclosed = tmp_path / "unclosed.alog"
    unclosed.write_bytes(open(sample_log, "rb").read()[:ends[-2]])
    bad = tmp_path / "bad.alog"
    _damage(unclosed, bad, victim.offset + 40)
    with asynclog.open(bad) as log:
        assert log.cut_at == victim.offset and [d.offset for d in log.damaged] == [victim.offset]
        assert len(list(log.events())) == 30 and len(list(log.stream("tokens"))) == 3
        assert len(log.tensor_names()) == 3 and log.tensor("bf16").shape == (10, 10)


def test_verify_calls_a_log_closed_as_incomplete_incomplete_and_damage_wins(tmp_path):
    with asynclog.start(tmp_path, name="died") as run:
        for i in range(10):
            run.event("step", i=i)
        run.close(complete=False, reason="probe died")
    res = subprocess.run([sys.executable, "-m", "asynclog", "verify", run.path], capture_output=True, text=True)
    assert res.returncode == 2 and "incomplete" in res.stderr and "probe died" in res.stderr
    bad = tmp_path / "bad.alog"
    _damage(run.path, bad, _frame_ends(run.path)[0] + 40)
    res = subprocess.run([sys.executable, "-m", "asynclog", "verify", str(bad)], capture_output=True, text=True)
    assert res.returncode == 1 and "incomplete" in res.stderr


def test_a_damaged_records_frame_does_not_end_events(tmp_path):
    with asynclog.start(tmp_path, name="records", config={"batch_records": 5}) as run:
        for i in range(20):
            run.event("step", i=i)
    with open(run.path, "rb") as f:
        victim = [h for h in fmt.scan_frames(f) if h.kind == fmt.FrameKind.RECORDS][1]
    bad = tmp_path / "bad.alog"
    _damage(run.path, bad, victim.end - 6)
    with asynclog.open(bad) as log:
        with pytest.warns(UserWarning, match=f"offset {victim.offset}"):
            steps = [r["data"]["i"] for r in log.events()]
        assert steps == list(range(5)) + list(range(10, 20))
        assert [d.offset for d in log.damaged] == [victim.offset]
        with pytest.raises(asynclog.CorruptLogError, match=f"offset {victim.offset}"):
            list(log.events(errors="raise"))


def test_a_writer_without_crc_instructions_writes_the_same_format_and_says_so(tmp_path):
    """crc32c falls back to C (slice-by-8, about zlib's speed) where the CPU has no CRC-32C instruction; the
    file is the same and its footer says which was used, so a slow run can be explained."""
    code = f"""
import os
os.environ["CRC32C_SW_MODE"] = "force"  # read at import, and inherited by the writer process
import asynclog, torch
with asynclog.start({str(tmp_path)!r}, name="soft", level="debug") as run:
    run.tensor("w", torch.arange(100_000, dtype=torch.float32))
print(run.path)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    path = res.stdout.strip()
    assert asynclog.verify(path)[1] == []
    with asynclog.open(path) as log:
        assert log.stats["checksum"] == "CRC-32C in software"
        assert torch.equal(log.tensor("w"), torch.arange(100_000, dtype=torch.float32))
    with asynclog.start(tmp_path, name="here") as run:
        run.event("x")
    with asynclog.open(run.path) as log:
        expected = "CRC-32C in hardware" if fmt.CHECKSUM_IN_HARDWARE else "CRC-32C in software"
        assert log.stats["checksum"] == expected


def test_past_a_damaged_header_a_frame_carried_in_a_tensor_is_taken_for_a_frame(tmp_path):
    """docs/FORMAT.md's resynchronisation trade-off as it stands: a run that logs another log's bytes carries intact
    frames; when a header before them is damaged in a file read by scanning, the search finds those frames first
    and the reader takes them for the run's own, footer included. verify still reports the damage."""
    with asynclog.start(tmp_path, name="inner") as inner:
        inner.event("planted", x=1)
    planted = bytearray(open(inner.path, "rb").read())
    with asynclog.start(tmp_path, name="outer", config={"compression": "raw"}) as outer:
        outer.tensor("bytes_of_a_log", torch.frombuffer(planted, dtype=torch.uint8))
    ends = _frame_ends(outer.path)
    unclosed = tmp_path / "unclosed.alog"  # no footer: read by scanning, as after a crash
    unclosed.write_bytes(open(outer.path, "rb").read()[:ends[-2]])
    with open(unclosed, "rb") as f:
        piece = next(h for h in fmt.scan_frames(f) if h.kind == fmt.FrameKind.TENSOR)
    bad = tmp_path / "bad.alog"
    _damage(unclosed, bad, piece.offset + 8)
    with asynclog.open(bad) as log:
        assert [e["name"] for e in log.events()] == ["planted"] and log.tensor_names() == []
        assert log.complete, "the planted log's footer was taken for the run's"
    frames, problems = asynclog.verify(bad)
    assert problems and problems[0].startswith(f"frame header checksum mismatch at offset {piece.offset}")
