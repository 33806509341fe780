"""Everything logged comes back exactly: records, every dtype and shape of tensor, stream chunks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import asynclog
import asynclog._format

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.bool, torch.complex64,
          torch.complex128, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16,
          torch.uint32, torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2]
SHAPES = [(), (0,), (3, 0, 2), (7,), (2, 3, 4)]


def _make(dtype: torch.dtype, shape: tuple, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size(),),
                        dtype=torch.uint8, generator=g)
    if dtype == torch.bool:
        return (raw % 2).bool().reshape(shape)
    return raw.view(dtype).reshape(shape)  # every bit pattern, NaNs and infs included


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    run = asynclog.start(tmp_path_factory.mktemp("rt"), name="roundtrip", level="debug")
    yield run
    run.close()


def test_every_dtype_and_shape_round_trips_bit_exact(logdir):
    originals = {}
    with asynclog.start(logdir, name="dtypes") as run:
        for dtype in DTYPES:
            for shape in SHAPES:
                name = f"{dtype}/{shape}"
                originals[name] = _make(dtype, shape, seed=len(originals))
                run.tensor(name, originals[name])
    with asynclog.open(run.path) as log:
        assert log.complete
        for name, original in originals.items():
            assert same_bits(log.tensor(name), original), name


def test_special_floats_and_non_contiguous_inputs_round_trip(logdir):
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-45, 3.4e38])
    base = torch.arange(60, dtype=torch.float64).reshape(3, 4, 5)
    views = {"transposed": base.transpose(0, 2), "strided": base[:, ::2, 1::2], "expanded": torch.ones(1).expand(9)}
    with asynclog.start(logdir, name="special") as run:
        run.tensor("special", special)
        for name, view in views.items():
            run.tensor(name, view)
    with asynclog.open(run.path) as log:
        assert same_bits(log.tensor("special"), special)
        for name, view in views.items():
            assert torch.equal(log.tensor(name), view), name


def test_caller_may_modify_tensor_right_after_the_call(logdir):
    t = torch.arange(1000, dtype=torch.int64)
    with asynclog.start(logdir, name="mutate") as run:
        run.tensor("t", t)
        t.fill_(-1)
    with asynclog.open(run.path) as log:
        assert torch.equal(log.tensor("t"), torch.arange(1000, dtype=torch.int64))


def test_tensor_larger_than_the_pool_streams_through_in_pieces(logdir):
    big = torch.randn(3 << 20)  # 12 MiB through a 2 MiB pool
    with asynclog.start(logdir, name="big", config={"staging_bytes": 2 << 20}) as run:
        run.tensor("big", big)
        run.tensor("big", big * 2)
    with asynclog.open(run.path) as log:
        assert log.tensor_count("big") == 2
        assert torch.equal(log.tensor("big", 0), big)
        assert torch.equal(log.tensor("big"), big * 2)
        pieces = [m for h, m in log.frames() if h.kind == asynclog._format.FrameKind.TENSOR]
        assert len(pieces) > 2 and all(m["pieces"] == pieces[0]["pieces"] for m in pieces)


def _equal(a, b) -> bool:
    """Equality where NaN equals NaN, tuples read back as lists."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text()
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                      max_leaves=12)
fields = st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True), values, max_size=8)


@given(records=st.lists(st.tuples(st.text(min_size=1), fields), min_size=1, max_size=20))
def test_records_round_trip(shared_run, tmp_path_factory, records):
    with asynclog.start(tmp_path_factory.mktemp("rec"), name="rec") as run:
        for name, data in records:
            run.event(name, **data)
    with asynclog.open(run.path) as log:
        got = list(log.events())
    assert len(got) == len(records)
    assert all(_equal(r["data"], d) and r["name"] == n for r, (n, d) in zip(got, records))


@given(dtype=st.sampled_from(DTYPES), shape=st.lists(st.integers(0, 5), max_size=4), seed=st.integers(0, 1000),
       transpose=st.booleans())
def test_tensors_round_trip_property(shared_run, dtype, shape, seed, transpose):
    t = _make(dtype, tuple(shape), seed)
    if transpose and t.dim() >= 2:
        t = t.transpose(0, -1)
    name = f"p/{seed}/{dtype}/{shape}/{transpose}"
    shared_run.tensor(name, t)
    shared_run.flush(durable=True)
    # Reading the open run's file mid-run exercises the scanning reader too.
    with asynclog.open(shared_run.path) as log:
        assert same_bits(log.tensor(name), t)


def test_stream_chunks_round_trip_ragged_rows_and_plain_columns(logdir):
    rows = []
    g = torch.Generator().manual_seed(1)
    for i in range(150):
        n = int(torch.randint(0, 40, (1,), generator=g))
        rows.append({"sequence_id": i, "tokens": torch.randint(0, 151_000, (n,), generator=g),
                     "logprobs": torch.randn(n, generator=g).to(torch.bfloat16), "text": f"séquence {i} ✓",
                     "mask": np.ones(n, dtype=np.int8)})
    with asynclog.start(logdir, name="stream") as run:
        stream = run.stream("tokens/E_batch", chunk_rows=64)
        for row in rows:
            stream.append(**row)
    with asynclog.open(run.path) as log:
        chunks = list(log.stream("tokens/E_batch"))
        assert [c.rows for c in chunks] == [64, 64, 22]
        got = list(log.rows("tokens/E_batch"))
    assert len(got) == len(rows)
    for want, have in zip(rows, got):
        assert have["sequence_id"] == want["sequence_id"] and have["text"] == want["text"]
        assert torch.equal(have["tokens"], want["tokens"])
        assert same_bits(have["logprobs"], want["logprobs"])
        assert np.array_equal(have["mask"].numpy(), want["mask"])


def test_phase_records_time_the_block_and_note_errors(logdir):
    with asynclog.start(logdir, name="phases") as run:
        with run.phase("phase1_sum_X", mb=4):
            sum(range(10000))
        with pytest.raises(ZeroDivisionError):
            with run.phase("phase5_importance"):
                1 / 0
    with asynclog.open(run.path) as log:
        phases = {r["name"]: r for r in log.events(type="phase")}
    assert phases["phase1_sum_X"]["duration"] > 0 and phases["phase1_sum_X"]["data"] == {"mb": 4}
    assert phases["phase5_importance"]["data"]["error"] == "ZeroDivisionError"


def test_level_gating_keeps_only_levels_at_or_below_the_runs(logdir):
    with asynclog.start(logdir, name="gated", level="standard") as run:
        run.at("minimal").event("kept_minimal")
        run.at("standard").event("kept_standard")
        run.at("detailed").event("dropped_detailed")
        run.at("debug").tensor("dropped", torch.ones(3))
        run.at("debug").stream("dropped").append(x=1)
        assert run.enabled("standard") and not run.enabled("debug")
        with pytest.raises(asynclog.LogInputError):
            run.at("verbose")
    with asynclog.open(run.path) as log:
        assert [r["name"] for r in log.events()] == ["kept_minimal", "kept_standard"]
        assert log.tensor_names() == [] and log.stream_names() == []


def test_frames_built_on_several_threads_are_written_in_order(logdir):
    config = {"compress_threads": 3, "batch_records": 7, "staging_bytes": 4 << 20}
    with asynclog.start(logdir, name="threads", level="debug", config=config) as run:
        stream = run.stream("rows", chunk_rows=5)
        for i in range(500):
            run.event("e", i=i)
            stream.append(i=i, ids=torch.full((50,), i))
            if i % 25 == 0:
                run.tensor("t", torch.arange(300_000) + i)
    with asynclog.open(run.path) as log:
        assert [r["data"]["i"] for r in log.events()] == list(range(500))
        assert [row["i"] for row in log.rows("rows")] == list(range(500))
        assert [int(log.tensor("t", k)[0]) for k in range(log.tensor_count("t"))] == list(range(0, 500, 25))


def test_stream_extend_takes_padded_batches_and_matches_per_row_append(logdir):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 151_000, (100, 30), generator=g)
    logprobs = torch.randn(100, 30, generator=g)
    lengths = torch.randint(0, 31, (100,), generator=g)
    with asynclog.start(logdir, name="extend") as run:
        batched = run.stream("batched", chunk_rows=16)
        batched.extend(sequence_id=list(range(60)), tokens=ids[:60], logprobs=logprobs[:60], lengths=lengths[:60])
        batched.extend(sequence_id=list(range(60, 100)), tokens=ids[60:], logprobs=logprobs[60:],
                       lengths=lengths[60:])
        rowwise = run.stream("rowwise", chunk_rows=16)
        for i in range(100):
            n = int(lengths[i])
            rowwise.append(sequence_id=i, tokens=ids[i, :n], logprobs=logprobs[i, :n])
        with pytest.raises(asynclog.LogInputError, match="rows"):
            batched.extend(sequence_id=[1, 2], tokens=ids[:3], logprobs=logprobs[:3])
    with asynclog.open(run.path) as log:
        a, b = list(log.rows("batched")), list(log.rows("rowwise"))
        assert [c.rows for c in log.stream("batched")] == [16] * 6 + [4]
    assert len(a) == len(b) == 100
    for x, y in zip(a, b):
        assert x["sequence_id"] == y["sequence_id"]
        assert torch.equal(x["tokens"], y["tokens"]) and torch.equal(x["logprobs"], y["logprobs"])


def test_events_and_streams_open_as_pandas_frames(logdir):
    with asynclog.start(logdir, name="pandas") as run:
        for i in range(5):
            run.event("core_results", step=i, deltaH1=i * 0.5)
        stream = run.stream("seq")
        for i in range(3):
            stream.append(sequence_id=i, logprobs=torch.full((i + 1,), -1.0), text=f"t{i}")
    with asynclog.open(run.path) as log:
        events = log.to_pandas()
        rows = log.to_pandas("seq")
    assert list(events["data.step"]) == list(range(5)) and events["data.deltaH1"].sum() == 5.0
    assert list(rows["text"]) == ["t0", "t1", "t2"] and len(rows["logprobs"][2]) == 3
