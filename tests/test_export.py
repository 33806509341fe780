"""``asynclog export``: a run's events, streams and tensors as Parquet, CSV, JSON lines or npz, opened by
pyarrow and DuckDB with the values ``asynclog.open`` reads; and the table views ``sequences``/``tokens``."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import asynclog
from asynclog.cli import main as cli_main
from asynclog.tools import export

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
duckdb = pytest.importorskip("duckdb")

ROWS = 150  # three chunks of 64 token rows, the last one short


@pytest.fixture(scope="module")
def run_path(tmp_path_factory):
    """A real run: events, a sequences stream, a ragged token stream and tensors of several dtypes."""
    g = torch.Generator().manual_seed(8)
    with asynclog.start(tmp_path_factory.mktemp("logs"), name="exported") as run:
        run.event("core_results", deltaH1=6.7e-5, deltaH_true=float("nan"), G=4)
        run.event("phase_end", phase="phase1", duration=0.25)
        sequences = run.stream("sequences/E_batch", chunk_rows=32)
        tokens = run.stream("tokens/E_batch", chunk_rows=64)
        for i in range(ROWS):
            n = 1 + (i * 7) % 23
            sequences.append(sequence_id=i, response_text=f"answer {i} é", generation_length=n,
                             reward=None if i < 40 else i / 10)
            tokens.append(sequence_id=i, tokens=torch.randint(0, 151_000, (n,), generator=g),
                          token_logprobs=-torch.rand(n, generator=g), rb_entropies=torch.rand(n, generator=g),
                          token_texts=[f"t{j}" for j in range(n)])
        run.tensor("E_batch/S_orig", torch.randn(16, generator=g))
        run.tensor("E_batch/importance_weights", torch.rand(16, generator=g, dtype=torch.float64))
        run.tensor("U_batch/rewards", torch.randn(4, 4, generator=g).to(torch.bfloat16))
    return run.path


def cli(*args: str) -> subprocess.CompletedProcess:
    """The console script in a fresh interpreter, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "asynclog", "export", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def here(capsys):
    """The same command in this process (``cli`` covers the console script itself)."""

    def run(*args: str) -> subprocess.CompletedProcess:
        code = cli_main(["export", *args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def exported(run_path, tmp_path, what: str, to: str, via=cli) -> str:
    out = tmp_path / f"{what.replace('/', '_')}.{to}"
    done = via(run_path, "--to", to, "--what", what, "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout
    return str(out)


def stream_rows(run_path, name):
    with asynclog.open(run_path) as log:
        return list(log.rows(name))


def test_token_stream_to_parquet_keeps_ragged_tensors_as_list_columns(run_path, tmp_path):
    path = exported(run_path, tmp_path, "tokens/E_batch", "parquet")
    table = pq.read_table(path)
    assert table.schema.field("tokens").type == pa.list_(pa.int64())
    assert table.schema.field("token_logprobs").type == pa.list_(pa.float32())
    assert table.schema.field("token_texts").type == pa.list_(pa.string())
    assert pq.ParquetFile(path).metadata.num_row_groups == 3  # one per chunk: written a chunk at a time
    got, want = table.to_pylist(), stream_rows(run_path, "tokens/E_batch")
    assert len(got) == len(want) == ROWS
    for g, w in zip(got, want):
        assert g["sequence_id"] == w["sequence_id"] and g["token_texts"] == w["token_texts"]
        assert g["tokens"] == w["tokens"].tolist() and g["rb_entropies"] == w["rb_entropies"].tolist()


def test_duckdb_reads_the_parquet_export_directly(run_path, tmp_path, here):
    tokens = exported(run_path, tmp_path, "tokens/E_batch", "parquet", here)
    sequences = exported(run_path, tmp_path, "sequences/E_batch", "parquet", here)
    want = stream_rows(run_path, "tokens/E_batch")
    total = sum(float(r["token_logprobs"].double().sum()) for r in want)
    (count, got_total), = duckdb.sql(f"select count(*), sum(list_sum(token_logprobs)) from '{tokens}'").fetchall()
    assert count == ROWS and math.isclose(got_total, total, rel_tol=1e-6)
    rows = duckdb.sql(f"select sequence_id, response_text, reward from '{sequences}' order by sequence_id").fetchall()
    assert rows == [(r["sequence_id"], r["response_text"], r["reward"]) for r in stream_rows(run_path, "sequences/E_batch")]


def test_events_to_parquet_keep_name_time_and_data_as_json(run_path, tmp_path, here):
    path = exported(run_path, tmp_path, "events", "parquet", here)
    with asynclog.open(run_path) as log:
        want = list(log.events())
    got = duckdb.sql(f"select type, name, time, data from '{path}'").fetchall()
    assert [(t, n, tm) for t, n, tm, _ in got] == [(e["type"], e["name"], e["time"]) for e in want]
    core = json.loads(got[[g[1] for g in got].index("core_results")][3])
    assert core["deltaH1"] == 6.7e-5 and core["G"] == 4 and core["deltaH_true"] == "NaN"  # NaN survives as text
    (duration,), = duckdb.sql(f"select (data->>'duration')::double from '{path}' where name='phase_end'").fetchall()
    assert duration == 0.25


def test_tensors_to_parquet_one_row_per_tensor_with_shape_and_values(run_path, tmp_path, here):
    path = exported(run_path, tmp_path, "tensors", "parquet", here)
    table = {row["name"]: row for row in pq.read_table(path).to_pylist()}
    with asynclog.open(run_path) as log:
        for name, tensor in log.tensors():
            row = table[name]
            assert row["shape"] == list(tensor.shape) and row["dtype"] == str(tensor.dtype).removeprefix("torch.")
            assert row["values"] == tensor.double().reshape(-1).tolist()


def test_tensors_to_npz_load_with_numpy(run_path, tmp_path, here):
    path = exported(run_path, tmp_path, "tensors", "npz", here)
    with np.load(path) as npz, asynclog.open(run_path) as log:
        assert sorted(npz.files) == sorted(log.tensor_names())
        for name, tensor in log.tensors():
            assert np.array_equal(npz[name], tensor.float().numpy() if tensor.dtype == torch.bfloat16
                                  else tensor.numpy())


def test_sequences_to_csv_and_jsonl_round_trip(run_path, tmp_path, here):
    want = stream_rows(run_path, "sequences/E_batch")
    with open(exported(run_path, tmp_path, "sequences/E_batch", "csv", here), newline="", encoding="utf-8") as f:
        got = list(csv.DictReader(f))
    assert [(int(g["sequence_id"]), g["response_text"]) for g in got] == [(w["sequence_id"], w["response_text"]) for w in want]
    assert got[0]["reward"] == "" and float(got[-1]["reward"]) == want[-1]["reward"]
    with open(exported(run_path, tmp_path, "sequences/E_batch", "jsonl", here), encoding="utf-8") as f:
        assert [json.loads(line) for line in f] == want


def test_a_stream_kind_exports_every_batch_of_that_kind(run_path, tmp_path, here):
    done = here(run_path, "--to", "parquet", "--what", "sequences", "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    [path] = done.stdout.split()
    assert path.endswith("sequences_E_batch.parquet") and pq.read_table(path).num_rows == ROWS


def test_mistakes_are_one_clear_line_and_a_documented_exit_code(run_path, tmp_path, here):
    for args, says in [(("--to", "npz", "--what", "events"), "npz holds tensors"),
                       (("--to", "parquet", "--what", "tokens/X_batch"), "tokens/E_batch"),
                       ]:
        done = here(run_path, *args, "-o", str(tmp_path / "x"))
        assert done.returncode == 3 and says in done.stderr and "Traceback" not in done.stderr, done.stderr
    done = cli(str(tmp_path / "nosuch.alog"), "--to", "parquet")
    assert done.returncode == 4 and "nosuch.alog" in done.stderr and "Traceback" not in done.stderr


def test_table_views_give_one_row_per_sequence_and_per_token(run_path):
    pd = pytest.importorskip("pandas")
    with asynclog.open(run_path) as log:
        seqs = export.sequences(log, "E_batch")
        toks = export.tokens(log, "E_batch")
    want = stream_rows(run_path, "tokens/E_batch")
    assert isinstance(seqs, pd.DataFrame) and len(seqs) == ROWS and seqs["sequence_id"].tolist() == list(range(ROWS))
    assert len(toks) == sum(len(r["tokens"]) for r in want)
    first = toks[toks["sequence_id"] == 3]
    assert first["position"].tolist() == list(range(len(want[3]["tokens"])))
    assert first["tokens"].tolist() == want[3]["tokens"].tolist()
    assert first["token_texts"].tolist() == want[3]["token_texts"]


# --- a run folder of ranks ------------------------------------------------------------------------------
KILLED_RANK = """
import os, signal, sys, torch, asynclog
run = asynclog.start(sys.argv[1], name="job", rank=1, world_size=2)
run.event("step", step=0)
tokens = run.stream("tokens/E_batch", chunk_rows=4)
for i in range(6):
    tokens.append(sequence_id=1000 + i, tokens=torch.arange(1 + i % 3))
tokens.flush()
run.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def log_rank(directory, rank: int, name: str = "job") -> None:
    """Rank ``rank`` of a job of two: an event and a ragged tokens stream of its own length."""
    with asynclog.start(directory, name=name, rank=rank, world_size=2) as run:
        run.event("step", step=rank)
        run.tensor("E_batch/S", torch.arange(4.0) + rank)
        tokens = run.stream("tokens/E_batch", chunk_rows=4)
        for i in range(5 + 3 * rank):
            tokens.append(sequence_id=1000 * rank + i, tokens=torch.arange(1 + i % 3))


@pytest.fixture(scope="module")
def ranks_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ranks")
    for rank in range(2):
        log_rank(folder, rank)
    return str(folder / "job")


def test_a_run_folder_exports_as_one_run_with_a_rank_column(ranks_path, tmp_path, here):
    path = exported(ranks_path, tmp_path, "tokens/E_batch", "parquet", here)
    with asynclog.open(ranks_path) as log:
        want = [(r["rank"], r["sequence_id"], r["tokens"].tolist()) for r in log.rows("tokens/E_batch")]
    got = pq.read_table(path).to_pylist()
    assert [(g["rank"], g["sequence_id"], g["tokens"]) for g in got] == want
    assert {g["rank"] for g in got} == {0, 1} and len(got) == 5 + 8
    assert pq.ParquetFile(path).metadata.num_row_groups == 2 + 2  # a chunk at a time, rank by rank
    with open(exported(ranks_path, tmp_path, "tokens/E_batch", "jsonl", here), encoding="utf-8") as f:
        assert [(r["rank"], r["sequence_id"]) for r in map(json.loads, f)] == [w[:2] for w in want]


def test_a_run_folders_events_carry_their_rank_as_a_column(ranks_path, tmp_path, here):
    path = exported(ranks_path, tmp_path, "events", "parquet", here)
    rows = duckdb.sql(f"select rank, (data->>'step')::int, data from '{path}' where name = 'step' "
                      "order by rank").fetchall()
    assert [r[:2] for r in rows] == [(0, 0), (1, 1)]
    assert all("rank" not in json.loads(r[2]) for r in rows)  # a column of its own, not inside data
    with open(exported(ranks_path, tmp_path, "events", "csv", here), newline="", encoding="utf-8") as f:
        assert sorted(r["rank"] for r in csv.DictReader(f) if r["name"] == "step") == ["0", "1"]


def test_a_run_folders_tensors_are_kept_apart_by_rank(ranks_path, tmp_path, here):
    rows = pq.read_table(exported(ranks_path, tmp_path, "tensors", "parquet", here)).to_pylist()
    assert [(r["rank"], r["name"], r["values"]) for r in rows] == [(k, "E_batch/S", [k + 0.0, k + 1, k + 2, k + 3])
                                                                 for k in range(2)]
    with np.load(exported(ranks_path, tmp_path, "tensors", "npz", here)) as npz:
        assert sorted(npz.files) == ["rank-00000/E_batch/S", "rank-00001/E_batch/S"]
        assert npz["rank-00001/E_batch/S"].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_a_run_folder_with_a_killed_rank_exports_what_is_there_and_names_it(tmp_path):
    log_rank(tmp_path, 0)
    killed = subprocess.run([sys.executable, "-c", KILLED_RANK, str(tmp_path)], capture_output=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    out = tmp_path / "tokens.parquet"
    done = cli(str(tmp_path / "job"), "--to", "parquet", "--what", "tokens/E_batch", "-o", str(out))
    assert done.returncode == 2 and "rank 1" in done.stderr and "incomplete" in done.stderr, done.stderr
    assert "rank 0" not in done.stderr and "Traceback" not in done.stderr and done.stdout.split() == [str(out)]
    got = pq.read_table(out).to_pylist()
    assert [(g["rank"], g["sequence_id"]) for g in got] == [(0, i) for i in range(5)] + [(1, 1000 + i) for i in range(6)]


# --- token texts from a run's vocabulary ------------------------------------------------------------------
def stored_columns(path, stream: str) -> set[str]:
    with asynclog.open(path) as log:
        return {column["name"] for chunk in log.stream(stream) for column in chunk.meta["columns"]}


@pytest.mark.parametrize("to", ["parquet", "jsonl"])
def test_token_texts_stored_once_per_id_export_with_every_token(texts_log, tmp_path, to):
    assert "token_texts" not in stored_columns(texts_log, "tokens/U_batch")
    path = exported(texts_log, tmp_path, "tokens", to)
    if to == "parquet":
        rows = pq.read_table(path).to_pylist()
    else:
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
    assert len(rows) == 80
    assert all(row["token_texts"] == [f"w{i}" for i in row["tokens"]] for row in rows)


def test_the_tokens_view_reads_each_tokens_text_from_the_vocabulary(texts_log):
    with asynclog.open(texts_log) as log:
        frame = log.tokens("U_batch")
    assert "token_texts" not in stored_columns(texts_log, "tokens/U_batch")
    assert len(frame) > 80 and (frame["token_texts"] == "w" + frame["tokens"].astype(str)).all()


def test_the_tokens_view_aligns_a_column_one_short_to_the_last_tokens(tmp_path):
    with asynclog.start(tmp_path, name="short") as run:  # logprobs of tokens 1..3: the first has none
        run.stream("tokens/E_batch").append(sequence_id=0, tokens=torch.arange(4), logprobs=-torch.arange(1.0, 4.0))
    with asynclog.open(run.path) as log:
        frame = export.tokens(log)
    assert frame["position"].tolist() == [0, 1, 2, 3] and frame["tokens"].tolist() == [0, 1, 2, 3]
    assert math.isnan(frame["logprobs"][0]) and frame["logprobs"][1:].tolist() == [-1.0, -2.0, -3.0]


@pytest.mark.parametrize("to", ["parquet", "csv", "jsonl", "npz"])
def test_a_link_planted_at_the_temporary_name_is_not_followed(run_path, tmp_path, to):
    import os
    import threading

    target, victim = tmp_path / f"out.{to}", tmp_path / "victim"
    victim.write_bytes(b"keep")
    os.symlink(victim, f"{target}.{os.getpid()}.{threading.get_ident()}.tmp")  # the name replacing() takes
    export.export(run_path, to, "tensors" if to in ("parquet", "npz") else "sequences/E_batch", target)
    assert victim.read_bytes() == b"keep" and target.stat().st_size > 0


@pytest.mark.parametrize("to", ["jsonl", "csv", "parquet"])
def test_a_record_too_deep_for_a_table_is_one_clear_line(tmp_path, to):
    """Found writing the fuzz targets (tests/fuzz): the events' JSON text recursed until RecursionError."""
    from test_cli import deep_log

    done = cli(deep_log(tmp_path), "--to", to, "-o", str(tmp_path / f"events.{to}"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 3 and len(lines) == 1 and "nests too deeply" in lines[0], done.stderr[-2000:]


def bits_log(directory) -> str:
    """A real log whose stream holds cells of torch.bits8, which torch neither lists nor converts, used as
    lookup keys too."""
    lookup = {"column": "words", "keys": "x", "table": "names", "key": "id", "value": "name"}
    with asynclog.start(directory, name="bits") as run:
        stream = run.stream("s", chunk_rows=2, lookups=[lookup])
        for i in range(2):
            stream.append(x=torch.zeros(2, dtype=torch.uint8).view(torch.bits8), i=i)
        run.stream("names", chunk_rows=1).append(id=1, name="one")
    return run.path


@pytest.mark.parametrize("command", ["cat --rows s", "export --to jsonl", "export --to parquet", "export --to csv"])
def test_a_stream_of_a_dtype_torch_cannot_convert_is_one_clear_line(tmp_path, command):
    """Found by the fuzzer (tests/fuzz, targets log_sealed and chunk: a chunk column of uint7): tolist raised
    RuntimeError and the conversion for numpy NotImplementedError."""
    words = command.split()
    args = [*words, "-o", str(tmp_path / "out"), "--what", "s"] if words[0] == "export" else words
    path = bits_log(tmp_path)
    done = subprocess.run([sys.executable, "-m", "asynclog", words[0], path, *args[1:]], capture_output=True,
                          text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 3 and len(lines) == 1 and "bits8" in lines[0], done.stderr[-2000:]
    with asynclog.open(path) as log:  # the lookup of such keys finds nothing, as for any key the table lacks
        assert [row["words"] for row in log.rows("s")] == [None, None]
