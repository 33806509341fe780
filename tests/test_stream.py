"""Stream: rows come back exactly once and intact, whatever threads, refused calls or chunk sizes do."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest
import torch

import asynclog

WIDTH = 12


def _row(i: int) -> dict:
    """Row ``i``: a unique id and tokens derived from it, so a row mixed with another's bytes is caught."""
    n = i % (WIDTH + 1)
    return {"row_id": i, "tokens": torch.arange(n, dtype=torch.int64) * 1_000_003 + i, "text": f"row {i}"}


def _padded(ids: list[int]) -> dict:
    """The rows ``ids`` as one padded batch for ``extend``: tokens [len(ids), WIDTH] plus lengths."""
    tokens = torch.full((len(ids), WIDTH), -1, dtype=torch.int64)
    lengths = []
    for k, i in enumerate(ids):
        row = _row(i)["tokens"]
        tokens[k, : len(row)] = row
        lengths.append(len(row))
    return {"row_id": list(ids), "tokens": tokens, "text": [f"row {i}" for i in ids], "lengths": lengths}


def _check_rows(path, name: str, want_ids) -> None:
    """Every id in ``want_ids`` read back exactly once, each row intact; no other rows."""
    with asynclog.open(path) as log:
        rows = list(log.rows(name))
    ids = [row["row_id"] for row in rows]
    assert len(ids) == len(set(ids)), "a row was written twice"
    assert sorted(ids) == sorted(want_ids)
    for row in rows:
        want = _row(row["row_id"])
        assert row["text"] == want["text"] and torch.equal(row["tokens"], want["tokens"]), row["row_id"]


@pytest.fixture
def fine_switching():
    """Switch threads as often as the interpreter can, so races show up in a short test."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


# --- threads -------------------------------------------------------------------------------------------
def _run_threads(targets) -> None:
    errors: list[BaseException] = []

    def guarded(target):
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors


def test_one_stream_shared_by_threads_writes_every_row_once_and_intact(logdir, fine_switching, full):
    per_thread = 5000 if full else 1000
    with asynclog.start(logdir, name="threads") as run:
        stream = run.stream("rows", chunk_rows=7)

        def appender(t: int):
            return lambda: [stream.append(**_row(t * per_thread + k)) for k in range(per_thread)]

        def extender(t: int):
            def go():
                for k in range(0, per_thread, 5):
                    stream.extend(**_padded(list(range(t * per_thread + k, t * per_thread + k + 5))))
            return go

        def flusher():
            for _ in range(per_thread // 10):
                stream.flush()

        _run_threads([appender(t) for t in range(6)] + [extender(t) for t in (6, 7)] + [flusher])
    _check_rows(run.path, "rows", range(8 * per_thread))


def test_rows_appended_while_the_stream_closes_are_kept_or_refused_never_lost(logdir, fine_switching):
    kept: list[list[int]] = [[] for _ in range(4)]
    started = threading.Barrier(5)
    with asynclog.start(logdir, name="closing") as run:
        stream = run.stream("rows", chunk_rows=5)

        def appender(t: int):
            def go():
                started.wait()
                for k in range(100_000):
                    i = t * 100_000 + k
                    try:
                        stream.append(**_row(i))
                    except asynclog.ClosedError:
                        return
                    kept[t].append(i)
            return go

        def closer():
            started.wait()
            deadline = time.monotonic() + 30
            while sum(map(len, kept)) < 6000 and time.monotonic() < deadline:
                time.sleep(1e-4)
            stream.close()

        _run_threads([appender(t) for t in range(4)] + [closer])
        with pytest.raises(asynclog.ClosedError):
            stream.extend(**_padded([10**9]))
    _check_rows(run.path, "rows", [i for ids in kept for i in ids])


# --- refused calls ---------------------------------------------------------------------------------------
BAD_LENGTHS = [
    ([3, WIDTH + 1], "at most"),
    ([3, -1], "negative"),
    ([3, 2.5], "integers"),
    ([3.0, 2.0], "integers"),
    (np.array([3.0, 2.0]), "integers"),
    (torch.tensor([3.0, 2.0]), "integers"),
    ([True, 2], "integers"),
    (np.array([True, False]), "integers"),
    (torch.tensor([True, False]), "integers"),
    (torch.tensor([[3, 2]]), "one"),
    ("ab", "integers"),
]


@pytest.mark.parametrize("lengths, message", BAD_LENGTHS)
def test_extend_refuses_lengths_that_do_not_fit_the_padded_rows(logdir, lengths, message):
    with asynclog.start(logdir, name="lengths") as run:
        stream = run.stream("rows", chunk_rows=4)
        stream.extend(**_padded([0, 1, 2]))
        bad = _padded([3, 4])
        bad["lengths"] = lengths
        with pytest.raises(asynclog.LogInputError, match=message):
            stream.extend(**bad)
        stream.extend(**_padded([5, 6]))
    _check_rows(run.path, "rows", [0, 1, 2, 5, 6])


def test_extend_takes_integer_lengths_of_any_kind(logdir):
    kinds = [[3, 7], np.array([3, 7], dtype=np.int32), np.array([3, 7], dtype=np.uint8), torch.tensor([3, 7]),
             [np.int64(3), np.int16(7)], (0, WIDTH)]
    tokens = torch.arange(2 * WIDTH).reshape(2, WIDTH)
    with asynclog.start(logdir, name="lengths_ok") as run:
        for lengths in kinds:
            run.stream("rows").extend(tokens=tokens, lengths=lengths)
    with asynclog.open(run.path) as log:
        rows = [row["tokens"] for row in log.rows("rows")]
    want = [int(n) for lengths in kinds for n in lengths]
    assert [len(row) for row in rows] == want
    assert all(torch.equal(row, tokens[k % 2, :n]) for k, (row, n) in enumerate(zip(rows, want)))


def test_refused_extend_buffers_no_part_of_its_rows(logdir):
    """The lengths fit the first padded column but not the second: nothing of the batch may stay behind."""

    def batch(first: int, width: int) -> dict:
        tokens = torch.arange(first, first + 2 * WIDTH).reshape(2, WIDTH)
        return {"tokens": tokens, "scores": tokens[:, :width].double(), "lengths": [WIDTH - 1, 2]}

    with asynclog.start(logdir, name="partial") as run:
        stream = run.stream("rows", chunk_rows=64)
        stream.extend(**batch(0, WIDTH))
        with pytest.raises(asynclog.LogInputError, match="scores"):
            stream.extend(**batch(100, 4))
        stream.extend(**batch(200, WIDTH))
    with asynclog.open(run.path) as log:
        rows = list(log.rows("rows"))
    assert [int(row["tokens"][0]) for row in rows] == [0, 12, 200, 212]
    assert all(torch.equal(row["scores"], row["tokens"].double()) for row in rows)


@pytest.mark.parametrize("call", ["append", "extend"])
def test_refused_first_call_leaves_the_columns_undefined(logdir, call):
    class Opaque:
        pass

    with asynclog.start(logdir, name="first") as run:
        stream = run.stream("rows")
        with pytest.raises(asynclog.LogInputError):
            if call == "append":
                stream.append(**_row(0), extra=Opaque())
            else:
                stream.extend(**_padded([0]), extra=[Opaque()])
        stream.append(**_row(1))
    _check_rows(run.path, "rows", [1])


@pytest.mark.parametrize("bad", [2**70, -(2**64), "\ud800"], ids=["int too big", "int too small", "lone surrogate"])
@pytest.mark.parametrize("call", ["append", "extend"])
def test_a_plain_value_msgpack_cannot_hold_is_refused_as_bad_input(logdir, call, bad):
    with asynclog.start(logdir, name="plain") as run:
        stream = run.stream("rows")
        stream.append(step=1, note="fine")
        with pytest.raises(asynclog.LogInputError, match="column 'step'|column 'note'"):
            if call == "append":
                stream.append(step=bad, note="x") if isinstance(bad, int) else stream.append(step=2, note=bad)
            else:
                columns = {"step": [2, bad], "note": ["x", "y"]} if isinstance(bad, int) else \
                    {"step": [2, 3], "note": ["x", bad]}
                stream.extend(**columns)
        stream.append(step=4, note="after")
    with asynclog.open(run.path) as log:
        assert [(row["step"], row["note"]) for row in log.rows("rows")] == [(1, "fine"), (4, "after")]


def test_a_muted_stream_takes_batches_too(logdir):
    with asynclog.start(logdir, name="muted", level="standard") as run:
        run.at("debug").stream("rows").extend(**_padded([0, 1]))
    with asynclog.open(run.path) as log:
        assert log.stream_names() == []


# --- chunk size ---------------------------------------------------------------------------------------------
SMALL_POOL = {"staging_bytes": 1 << 20}
PIECE = (1 << 20) // 4  # the largest piece a 1 MiB pool takes (StagingPool.max_piece)


def _chunk_bytes(chunk) -> int:
    return sum(column["nbytes"] for column in chunk.meta["columns"])


def test_chunks_ship_early_to_stay_within_the_staging_pool(logdir):
    big = 5000  # 40 kB of int64 tokens a row: 64 rows would be 2.5 MiB, more than the whole pool
    with asynclog.start(logdir, name="split", config=SMALL_POOL) as run:
        stream = run.stream("rows", chunk_rows=64)
        for i in range(100):
            stream.append(row_id=i, tokens=torch.arange(big) + i, text="x" * i)
        ids = torch.arange(100, 200)
        stream.extend(row_id=ids.tolist(), tokens=torch.arange(big)[None, :] + ids[:, None],
                      text=["x" * i for i in range(100, 200)])
    with asynclog.open(run.path) as log:
        chunks = list(log.stream("rows"))
        rows = list(log.rows("rows"))
    assert max(_chunk_bytes(chunk) for chunk in chunks) <= PIECE
    assert [row["row_id"] for row in rows] == list(range(200))
    assert all(torch.equal(row["tokens"], torch.arange(big) + row["row_id"]) for row in rows)
    assert all(row["text"] == "x" * row["row_id"] for row in rows)


@pytest.mark.parametrize("call", ["append", "extend"])
def test_a_row_larger_than_the_staging_pool_is_refused_with_advice(logdir, call):
    huge = torch.zeros(PIECE // 8 + 1, dtype=torch.int64)
    with asynclog.start(logdir, name="huge", config=SMALL_POOL) as run:
        stream = run.stream("rows", chunk_rows=8)
        for i in range(3):
            stream.append(**_row(i))
        with pytest.raises(asynclog.LogInputError, match=r"(?s)2621\d\d bytes.*staging_bytes.*run\.tensor"):
            if call == "append":
                stream.append(row_id=3, tokens=huge, text="huge")
            else:
                stream.extend(row_id=[3, 4], tokens=torch.stack([huge, huge]), text=["a", "b"])
        stream.append(**_row(5))
    _check_rows(run.path, "rows", [0, 1, 2, 5])


@pytest.mark.parametrize("lookup, message", [
    ({"column": "text", "keys": "tokens", "table": "t", "key": "k", "value": "v"}, "'text' is a stored column"),
    ({"column": "words", "keys": "nope", "table": "t", "key": "k", "value": "v"}, "'nope' is not a column"),
    ({"column": "words", "keys": "tokens"}, "lookups"),
])
def test_a_lookup_that_does_not_fit_the_rows_is_refused(logdir, lookup, message):
    with asynclog.start(logdir, name="lookup") as run:
        with pytest.raises(asynclog.LogInputError, match=message):
            run.stream("rows", lookups=[lookup]).extend(**_padded([0, 1]))
