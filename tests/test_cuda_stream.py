"""Streams with CUDA rows: CPU and CUDA rows mixed in one chunk come back bit-exact and in order."""

from __future__ import annotations

import pytest
import torch

import asynclog

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _tokens(i: int) -> torch.Tensor:
    """Row ``i``'s tokens: derived from its id, so a row with another's bytes is caught."""
    return torch.arange(i % 9, dtype=torch.int64) * 1_000_003 + i


def _scores(i: int) -> torch.Tensor:
    """Row ``i``'s per-token scores, bfloat16 with every bit pattern possible (NaNs too)."""
    g = torch.Generator().manual_seed(i)
    return torch.randint(-(1 << 15), 1 << 15, (i % 9,), generator=g, dtype=torch.int16).view(torch.bfloat16)


def _padded(rows: list[torch.Tensor], width: int = 8) -> torch.Tensor:
    out = torch.zeros(len(rows), width, dtype=rows[0].dtype)
    for k, row in enumerate(rows):
        out[k, : len(row)] = row
    return out


def test_cpu_and_cuda_rows_mixed_in_one_chunk_round_trip_in_order(logdir):
    devices = ["cpu", "cuda", "cuda", "cpu", "cpu", "cuda", "cpu", "cuda", "cpu"] * 5
    ids = list(range(100, 104))
    with asynclog.start(logdir, name="mixed") as run:
        stream = run.stream("rows", chunk_rows=16)
        for i, device in enumerate(devices):
            stream.append(row_id=i, tokens=_tokens(i).to(device), scores=_scores(i).to(device))
        # A padded batch on the device between CPU rows: extend's CUDA part must keep its place too.
        stream.extend(row_id=ids, tokens=_padded([_tokens(i) for i in ids]).cuda(),
                      scores=_padded([_scores(i) for i in ids]).cuda(),
                      lengths=[i % 9 for i in ids])
        stream.append(row_id=104, tokens=_tokens(104), scores=_scores(104))
    with asynclog.open(run.path) as log:
        rows = list(log.rows("rows"))
    assert [row["row_id"] for row in rows] == list(range(len(devices))) + ids + [104]
    for row in rows:
        i = row["row_id"]
        assert torch.equal(row["tokens"], _tokens(i)), i
        assert row["scores"].dtype == torch.bfloat16, i
        assert torch.equal(row["scores"].view(torch.int16), _scores(i).view(torch.int16)), i
