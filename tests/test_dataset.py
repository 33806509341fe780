"""``asynclog export DIR --dataset OUT`` and ``asynclog query``: real runs (the demo's sweep and a run folder of
two ranks) become one hive-partitioned Parquet dataset that DuckDB and pyarrow.dataset read with the values
``asynclog.open`` reads; exporting again adds only what is new."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch

import asynclog
from asynclog.tools.analysis import find_logs
from asynclog.probe.toyprobe import SIZES, ToyTokenizer

pa_ds = pytest.importorskip("pyarrow.dataset")
duckdb = pytest.importorskip("duckdb")


def asynclog_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asynclog", *args], capture_output=True, text=True, timeout=120)


def log_ranks(directory, name: str = "ranks", world_size: int = 2) -> None:
    """A run folder of ``world_size`` ranks, each with a tokens stream of its own length."""
    g = torch.Generator().manual_seed(3)
    for rank in range(world_size):
        with asynclog.start(directory, name=name, rank=rank, world_size=world_size) as run:
            run.event("core_results", rank=rank)
            tokens = run.stream("tokens/E_batch", chunk_rows=4)
            for i in range(5 + 3 * rank):
                n = 1 + i % 4
                tokens.append(sequence_id=i, tokens=torch.randint(0, 1000, (n,), generator=g),
                              token_logprobs=-torch.rand(n, generator=g))


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("logs")
    done = asynclog_cli("demo", "--size", "tiny", "--checkpoints", "2", "--out", str(folder))
    assert done.returncode == 0, done.stderr
    log_ranks(folder)
    return folder


@pytest.fixture(scope="module")
def dataset(logs, tmp_path_factory):
    out = tmp_path_factory.mktemp("dataset")
    done = asynclog_cli("export", str(logs), "--dataset", str(out))
    assert done.returncode == 0, done.stderr
    return out


def checkpoint_of(path: str) -> str:
    """The checkpoint partition a run should land in: the demo's step name, the rank folder's name."""
    name = os.path.basename(path)
    return name if os.path.isdir(path) else "step_" + name.removesuffix(".alog").rsplit("_", 1)[1]


def tokens_per_partition(logs) -> dict:
    """Tokens and their summed logprobs per (checkpoint, rank), as asynclog.open reads them."""
    counts, sums = Counter(), Counter()
    for path in find_logs(logs):
        with asynclog.open(path) as log:
            for name in (n for n in log.stream_names() if n.startswith("tokens/")):
                for row in log.rows(name):
                    key = (checkpoint_of(path), row.get("rank", 0))
                    counts[key] += len(row["tokens"])
                    sums[key] += float(row["token_logprobs"].double().sum())
    return {key: (counts[key], sums[key]) for key in counts}


def test_every_run_and_rank_lands_in_its_checkpoint_and_rank_partition(dataset):
    parts = sorted(os.path.relpath(os.path.join(d, f), dataset).replace(os.sep, "/")
                   for d, _, files in os.walk(dataset) for f in files if f.endswith(".parquet"))
    tokens = [p for p in parts if p.startswith("table=tokens/")]
    assert [p.split("/")[1:3] for p in tokens] == [["checkpoint=ranks", "rank=0"], ["checkpoint=ranks", "rank=1"],
                                                   ["checkpoint=step_000", "rank=0"], ["checkpoint=step_001", "rank=0"]]
    assert all(p.split("/")[-1].startswith("part-") for p in parts)
    assert sum(p.startswith("table=runs/") for p in parts) == 1  # one pack of the three runs' rows
    assert any(p.startswith("table=sequences/checkpoint=step_000/rank=0/") for p in parts)


def test_duckdb_reads_the_dataset_with_the_values_asynclog_open_reads(logs, dataset):
    glob = os.path.join(dataset, "table=tokens", "**", "*.parquet")
    got = duckdb.sql(f"select checkpoint, rank, count(*), sum(token_logprobs) "
                     f"from read_parquet('{glob}', hive_partitioning=true) group by all").fetchall()
    want = tokens_per_partition(logs)
    assert {(c, r) for c, r, *_ in got} == set(want) == {("step_000", 0), ("step_001", 0), ("ranks", 0), ("ranks", 1)}
    for checkpoint, rank, n, total in got:
        assert n == want[checkpoint, rank][0] and math.isclose(total, want[checkpoint, rank][1], rel_tol=1e-5)


def test_pyarrow_dataset_reads_the_same_rows_and_values(logs, dataset):
    table = pa_ds.dataset(os.path.join(dataset, "table=tokens"), partitioning="hive").to_table()
    assert set(table.column("rank").to_pylist()) == {0, 1}
    ranks = os.path.join(logs, "ranks")
    with asynclog.open(ranks) as log:
        want = [(row["rank"], t) for row in log.rows("tokens/E_batch") for t in row["tokens"].tolist()]
    [run] = [r["run"] for r in _runs_rows(dataset).values() if r["run_name"] == "ranks"]
    rows = table.filter(pa_ds.field("run") == run).sort_by([("rank", "ascending")]).to_pydict()
    assert list(zip(rows["rank"], rows["tokens"])) == want
    [step0] = [p for p in find_logs(logs) if p.endswith("step_000.alog")]
    with asynclog.open(step0) as log:
        logprobs = sum(float(r["token_logprobs"].double().sum()) for r in log.rows("tokens/E_batch"))
    got = table.filter((pa_ds.field("checkpoint") == "step_000") & (pa_ds.field("batch") == "E_batch"))
    assert math.isclose(sum(got.column("token_logprobs").to_pylist()), logprobs, rel_tol=1e-5)


def test_runs_table_holds_one_row_per_run_with_its_core_results(logs, dataset):
    runs = pa_ds.dataset(os.path.join(dataset, "table=runs")).to_table().to_pylist()
    assert sorted(r["checkpoint"] for r in runs) == ["ranks", "step_000", "step_001"]
    assert len({r["run"] for r in runs}) == 3 and all(len(r["run"]) == 16 for r in runs)
    demo = [r for r in runs if r["checkpoint"] == "step_001"][0]
    assert demo["status"] == "complete" and demo["level"] == "debug" and isinstance(demo["deltaH1"], float)


def test_token_texts_each_demo_run_stores_once_per_id_reach_every_token_row(logs, dataset):
    tokenizer = ToyTokenizer(SIZES["tiny"].vocab)
    for path in (p for p in find_logs(logs) if p.endswith(".alog")):  # the demo's runs, with its tokenizer
        with asynclog.open(path) as log:
            stored = {c["name"] for chunk in log.stream("tokens/E_batch") for c in chunk.meta["columns"]}
            assert "token_texts" not in stored and "vocab" in log.stream_names()
    glob = os.path.join(dataset, "table=tokens", "checkpoint=step_*", "**", "*.parquet")
    rows = duckdb.sql(f"select tokens, token_texts from read_parquet('{glob}', hive_partitioning=true)").fetchall()
    assert len(rows) == sum(n for (checkpoint, _), (n, _) in tokens_per_partition(logs).items()
                            if checkpoint.startswith("step_"))
    assert all(text == tokenizer.decode([token]) for token, text in rows)


def parquet_mtimes(folder) -> dict[str, int]:
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(folder) for f in files if f.endswith(".parquet")}


def test_exporting_again_rewrites_nothing_and_adds_a_new_run(logs, tmp_path):
    folder, out = tmp_path / "logs", tmp_path / "dataset"
    shutil.copytree(logs, folder)
    for name in os.listdir(folder / "ranks"):  # an hour old, so a sweep keeps an index of the run folder
        os.utime(folder / "ranks" / name, (time.time() - 3600,) * 2)
    assert asynclog_cli("export", str(folder), "--dataset", str(out)).returncode == 0
    before = parquet_mtimes(out)
    assert asynclog_cli("ls", str(folder / "ranks")).returncode == 0  # leaves its index in the run folder
    again = asynclog_cli("export", str(folder), "--dataset", str(out))
    assert again.returncode == 0 and again.stdout == "" and parquet_mtimes(out) == before
    log_ranks(folder, name="late", world_size=3)
    added = asynclog_cli("export", str(folder), "--dataset", str(out))
    assert added.returncode == 0, added.stderr
    after = parquet_mtimes(out)
    runs_table = os.path.join(str(out), "table=runs")  # one small pack, written again with the new run's row
    assert {p: after[p] for p in before if not p.startswith(runs_table)} == {
        p: t for p, t in before.items() if not p.startswith(runs_table)}
    assert sorted(os.path.relpath(p, out).split(os.sep)[:3] for p in set(after) - set(before)
                  if "table=tokens" in p) == [["table=tokens", "checkpoint=late", f"rank={r}"] for r in range(3)]
    assert count(out, "runs") == 4 and len([p for p in after if p.startswith(runs_table)]) == 1


def test_query_prints_the_aggregate_over_every_run_and_rank(logs, dataset):
    done = asynclog_cli("query", str(dataset), "select rank, count(*) as n from tokens join runs using (run) "
                                               "where run_name = 'ranks' group by rank order by rank", "--csv")
    assert done.returncode == 0, done.stderr
    with asynclog.open(os.path.join(logs, "ranks")) as log:
        want = Counter(row["rank"] for row in log.rows("tokens/E_batch") for _ in row["tokens"])
    assert done.stdout.splitlines() == ["rank,n", *(f"{r},{n}" for r, n in sorted(want.items()))]
    text = asynclog_cli("query", str(dataset), "select count(*) as runs from runs")
    assert text.returncode == 0 and text.stdout.split() == ["runs", "3"]


def test_query_on_a_folder_of_logs_says_to_export_first(logs):
    done = asynclog_cli("query", str(logs), "select 1")
    assert done.returncode == 3 and "export" in done.stderr and "--dataset" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def _token_rows(out, checkpoint: str) -> int:
    parts = f"{out}/table=tokens/checkpoint={checkpoint}/**/*.parquet"
    return duckdb.sql(f"SELECT count(*) FROM read_parquet('{parts}', hive_partitioning=true)").fetchall()[0][0]


def test_a_run_replaced_since_the_last_export_replaces_its_rows(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "dataset"
    log_ranks(logs, name="redo", world_size=1)  # one rank: a plain .alog file named redo.alog
    assert asynclog_cli("export", str(logs), "--dataset", str(out)).returncode == 0
    before = _token_rows(out, "redo")
    with asynclog.start(logs, path=logs / "redo.alog", overwrite=True) as run:  # the same file, new content
        run.stream("tokens/E_batch").append(sequence_id=0, tokens=torch.arange(3), token_logprobs=-torch.ones(3))
    done = asynclog_cli("export", str(logs), "--dataset", str(out))
    assert done.returncode == 0, done.stderr
    assert before == sum(1 + i % 4 for i in range(5)) and _token_rows(out, "redo") == 3


def _runs_rows(out) -> dict[str, dict]:
    """The runs table's rows by their run's name."""
    return {r["run_name"]: r for r in pa_ds.dataset(os.path.join(out, "table=runs")).to_table().to_pylist()}


def test_a_summary_written_after_the_export_reaches_the_runs_table(logs, tmp_path):
    folder, out = tmp_path / "logs", tmp_path / "dataset"
    shutil.copytree(logs, folder)
    [summary] = [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files
                 if f.endswith("step_001_summary.json")]
    os.replace(summary, tmp_path / "aside.json")  # DetailedLogger writes the summary after closing the log
    assert asynclog_cli("export", str(folder), "--dataset", str(out)).returncode == 0
    [run] = [r for r in _runs_rows(out) if r.endswith("step_001")]
    assert _runs_rows(out)[run]["deltaH1"] is None
    os.replace(tmp_path / "aside.json", summary)
    again = asynclog_cli("export", str(folder), "--dataset", str(out))
    assert again.returncode == 0, again.stderr
    assert isinstance(_runs_rows(out)[run]["deltaH1"], float)


def test_a_run_rewritten_in_place_with_the_same_size_and_mtime_is_exported_again(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "dataset"
    log_ranks(logs, name="redo", world_size=1)
    assert asynclog_cli("export", str(logs), "--dataset", str(out)).returncode == 0
    path, before = logs / "redo.alog", os.stat(logs / "redo.alog")
    with open(path, "r+b") as f:  # another content of the very same size, and its old mtime put back
        f.write(b"\0" * before.st_size)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    done = asynclog_cli("export", str(logs), "--dataset", str(out))
    assert done.returncode == 0 and "redo.alog" in done.stderr, done.stderr
    assert _runs_rows(out)["redo"]["status"] == "damaged"
    assert not [f for _, _, files in os.walk(out / "table=tokens") for f in files]  # its old rows are gone


def test_an_unreadable_run_keeps_its_runs_row_and_the_others_export(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "dataset"
    log_ranks(logs, name="good", world_size=1)
    (logs / "junk.alog").write_bytes(b"not a log at all")
    done = asynclog_cli("export", str(logs), "--dataset", str(out))
    assert done.returncode == 0, done.stderr
    assert "junk.alog" in done.stderr  # said, not silent
    assert _token_rows(out, "good") == sum(1 + i % 4 for i in range(5))
    runs = duckdb.sql(f"SELECT run_name, status FROM read_parquet('{out}/table=runs/*.parquet')").fetchall()
    assert sorted(r[0] for r in runs) == ["good", "junk"]


def _counts_by_partition(rows) -> dict:
    return dict(Counter((str(c), int(r)) for c, r in rows))


def _token_texts(rows) -> int:
    """Token texts present: only the demo's debug runs have them, and the rank folder's run sorts first."""
    return sum(text is not None for text in rows)


@pytest.mark.parametrize("engine", ["pyarrow", "pandas", "duckdb", "polars", "dask"])
def test_the_documented_reads_see_every_token_and_every_column(logs, dataset, engine):
    """docs/DATASET.md's lines, run as written from the dataset's parent folder (as data/)."""
    pytest.importorskip(engine)
    want = {key: n for key, (n, _) in tokens_per_partition(logs).items()}
    data = os.path.join(os.path.dirname(dataset), "data")
    if not os.path.exists(data):
        os.symlink(dataset, data)
    here = os.getcwd()
    os.chdir(os.path.dirname(dataset))
    try:
        got, texts = _read_with(engine)
    finally:
        os.chdir(here)
    assert got == want
    if texts is not None:  # every engine but Dask, which is given the columns every run has
        assert texts == sum(n for (checkpoint, _), n in want.items() if checkpoint.startswith("step_"))


def _read_with(engine: str):
    """Tokens per (checkpoint, rank) and token texts present, as the documented line for ``engine`` reads them."""
    columns = ["checkpoint", "rank"] + ([] if engine == "dask" else ["token_texts"])  # Dask's line names its columns
    rows = _read_tokens_with(engine, columns)
    texts = None if engine == "dask" else _token_texts(None if t is None or t != t else t for *_, t in rows)
    return _counts_by_partition((c, r) for c, r, *_ in rows), texts


def log_mixed_batches(directory) -> None:
    """One run, two batches of each stream kind in several chunks: E_batch's ``reward`` is null in its first
    chunk and a number later; U_batch's sequences have a ``judge`` column E_batch's lack."""
    with asynclog.start(directory, name="mixed") as run:
        for batch, extra in (("E_batch", {}), ("U_batch", {"judge": "ok"})):
            sequences = run.stream(f"sequences/{batch}", chunk_rows=2)
            tokens = run.stream(f"tokens/{batch}", chunk_rows=2)
            for i in range(5):
                sequences.append(sequence_id=i, reward=None if i < 2 else i / 4, **extra)
                tokens.append(sequence_id=i, tokens=torch.arange(i + 1) + 10 * i)


def test_every_chunk_and_column_of_each_batch_of_a_kind_lands_in_the_part_file(tmp_path):
    log_mixed_batches(tmp_path / "logs")
    out = tmp_path / "dataset"
    from asynclog.tools.dataset import export_dataset

    export_dataset(tmp_path / "logs", out)
    sequences = pa_ds.dataset(out / "table=sequences", partitioning="hive").to_table()
    assert sequences.schema.field("reward").type == "double" and sequences.schema.field("judge").type == "string"
    assert sequences.select(["batch", "sequence_id", "reward", "judge"]).to_pylist() == [
        {"batch": batch, "sequence_id": i, "reward": None if i < 2 else i / 4, "judge": judge}
        for batch, judge in (("E_batch", None), ("U_batch", "ok")) for i in range(5)]
    tokens = pa_ds.dataset(out / "table=tokens", partitioning="hive").to_table()
    assert tokens.select(["batch", "sequence_id", "position", "tokens"]).to_pylist() == [
        {"batch": batch, "sequence_id": i, "position": p, "tokens": 10 * i + p}
        for batch in ("E_batch", "U_batch") for i in range(5) for p in range(i + 1)]


# --- right numbers after the run: identity, sync, partitions, ragged columns, faults -------------------------
def one_sequence(path, tokens: int = 6, stream: str = "tokens/E_batch", **columns) -> str:
    """A run at ``path`` with one row of ``tokens`` tokens in ``stream`` (and ``columns`` in that row)."""
    with asynclog.start(path=path) as run:
        run.stream(stream).append(sequence_id=0, tokens=torch.arange(tokens), **columns)
    return run.path


def export_to(logs, out) -> subprocess.CompletedProcess:
    return asynclog_cli("export", str(logs), "--dataset", str(out))


def sql(out, query: str) -> list[tuple]:
    from asynclog.tools.dataset import connect

    return connect(out).sql(query).fetchall()


def count(out, table: str = "tokens") -> int:
    return sql(out, f"select count(*) from {table}")[0][0]


ODD_NAMES = ("a b", "a_b", "x/y_z", "x_y/z", "x_y_z", "步骤", "шаг")


def test_runs_whose_names_differ_only_in_odd_characters_keep_their_own_rows(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "dataset"
    for k, name in enumerate(ODD_NAMES):
        one_sequence(logs / f"{name}.alog", tokens=k + 1)
    done = export_to(logs, out)
    assert done.returncode == 0, done.stderr
    assert count(out, "runs") == len(ODD_NAMES) and count(out) == sum(range(1, len(ODD_NAMES) + 1))
    got = sql(out, "select r.run_name, count(*) from tokens t join runs r using (run) group by 1")
    assert sorted(got) == sorted((name, k + 1) for k, name in enumerate(ODD_NAMES))


def test_runs_of_one_name_in_two_exported_folders_are_two_runs(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "dataset"
    for folder, n in (("lr1", 3), ("lr2", 5)):
        one_sequence(logs / folder / "step_60.alog", tokens=n)
        assert export_to(logs / folder, out).returncode == 0
    assert count(out, "runs") == 2 and count(out) == 8
    runs = sql(out, "select run, run_name, checkpoint from runs")
    assert len({r[0] for r in runs}) == 2 and {r[1:] for r in runs} == {("step_60", "step_60")}
    assert sorted(n for _, n in sql(out, "select run, count(*) from tokens group by run")) == [3, 5]


def test_a_run_moved_inside_the_exported_folder_is_held_once_under_its_identity(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "dataset"
    one_sequence(logs / "day1" / "a.alog")
    assert export_to(logs, out).returncode == 0
    [(run, path)] = sql(out, "select run, path from runs")
    tokens_parts = {p: t for p, t in parquet_mtimes(out).items() if "table=tokens" in p}
    os.renames(logs / "day1", logs / "archive" / "day1")
    done = export_to(logs, out)
    assert done.returncode == 0, done.stderr
    assert sql(out, "select run, path, run_name from runs") == [
        (run, str(logs / "archive" / "day1" / "a.alog"), "archive/day1/a")]
    assert count(out) == 6 and sql(out, "select distinct run from tokens") == [(run,)]
    assert {p: t for p, t in parquet_mtimes(out).items() if "table=tokens" in p} == tokens_parts  # not written again


def test_overlapping_exports_at_once_hold_each_run_once(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "dataset"
    for k in range(6):  # three runs in a, three in b, large enough for the exports to overlap
        one_sequence(logs / "ab"[k // 3] / f"r{k}.alog", tokens=40_000 + k)
    exports = [subprocess.Popen([sys.executable, "-m", "asynclog", "export", str(folder), "--dataset", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for folder in (logs, logs / "a", logs / "b")]
    assert [e.wait(120) for e in exports] == [0, 0, 0]
    assert export_to(logs, out).returncode == 0
    assert count(out, "runs") == 6 and count(out) == sum(40_000 + k for k in range(6))


def test_a_run_removed_from_the_source_leaves_the_dataset_at_the_next_export(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "dataset"
    old, new = one_sequence(logs / "old.alog", tokens=4), one_sequence(logs / "new.alog", tokens=5)
    assert export_to(logs, out).returncode == 0
    os.unlink(old)  # what retention (max_files) does
    assert export_to(logs, out).returncode == 0
    assert sql(out, "select run_name from runs") == [("new",)] and count(out) == 5
    assert not [p for p in parquet_mtimes(out) if "part-" not in os.path.basename(p)]


def test_a_sync_removes_only_the_runs_that_came_from_below_the_folder_it_exports(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "dataset"
    one_sequence(logs / "lr1" / "step_60.alog", tokens=3)
    gone = one_sequence(logs / "lr2" / "step_60.alog", tokens=5)
    for folder in ("lr1", "lr2"):
        assert export_to(logs / folder, out).returncode == 0
    os.unlink(gone)
    assert export_to(logs / "lr1", out).returncode == 0
    assert count(out, "runs") == 2 and count(out) == 8  # lr2's run came from lr2, not from lr1
    assert export_to(logs / "lr2", out).returncode == 0
    assert sql(out, "select path from runs") == [(str(logs / "lr1" / "step_60.alog"),)] and count(out) == 3


def test_a_part_file_no_exported_run_names_is_removed_by_the_next_export(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "dataset"
    one_sequence(logs / "a.alog")
    assert export_to(logs, out).returncode == 0
    [part] = [p for p in parquet_mtimes(out) if "table=tokens" in p]
    shutil.copy(part, os.path.join(os.path.dirname(part), "part-a_doubled.parquet"))  # as overlapping exports left
    assert _token_rows(out, "a") == 12  # a read of every file takes it (connect reads only the files the state names)
    assert export_to(logs, out).returncode == 0
    assert count(out) == 6


def test_a_dataset_an_older_asynclog_wrote_is_written_again_once(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "dataset"
    path = one_sequence(logs / "a.alog")
    assert export_to(logs, out).returncode == 0
    [part] = [p for p in parquet_mtimes(out) if "table=tokens" in p]
    shutil.copy(part, os.path.join(os.path.dirname(part), "part-a.parquet"))  # as it named runs: by their path
    (out / "_asynclog_exported.json").write_text(json.dumps({path: {"signature": [], "parts": []}}))
    done = export_to(logs, out)
    assert done.returncode == 0 and "older asynclog" in done.stderr, done.stderr
    assert count(out, "runs") == 1 and count(out) == 6


def test_a_copy_of_a_run_is_held_once_and_named(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "dataset"
    shutil.copy(one_sequence(logs / "a.alog"), logs / "b.alog")
    done = export_to(logs, out)
    assert done.returncode == 0, done.stderr
    assert count(out, "runs") == 1 and count(out) == 6
    assert "b.alog" in done.stderr and "a.alog" in done.stderr and "copy" in done.stderr


NUMBER_LIKE = ("007", "7", "0010", "10")


@pytest.fixture(scope="module")
def number_like(tmp_path_factory):
    """A dataset of runs whose checkpoints look like numbers: 007 and 7 are two checkpoints, not one."""
    folder = tmp_path_factory.mktemp("numbers")
    for k, name in enumerate(NUMBER_LIKE):
        one_sequence(folder / "logs" / f"{name}.alog", tokens=k + 1)
    assert export_to(folder / "logs", folder / "data").returncode == 0
    return folder


@pytest.mark.parametrize("engine", ["pyarrow", "pandas", "duckdb", "query", "polars", "dask"])
def test_checkpoints_that_look_like_numbers_stay_apart_as_strings_in_every_engine(number_like, engine):
    pytest.importorskip({"query": "duckdb"}.get(engine, engine))
    here = os.getcwd()
    os.chdir(number_like)
    try:
        got = _partitions_with(engine)
    finally:
        os.chdir(here)
    assert dict(Counter(got)) == {(name, "0"): k + 1 for k, name in enumerate(NUMBER_LIKE)}


def _partitions_with(engine: str) -> list[tuple]:
    """(checkpoint, rank) of every token row, read with docs/DATASET.md's line for ``engine`` from ``data/``."""
    if engine == "query":
        done = asynclog_cli("query", "data", "select checkpoint, rank from tokens", "--csv")
        assert done.returncode == 0, done.stderr
        return [tuple(line.split(",")) for line in done.stdout.splitlines()[1:]]
    rows = _read_tokens_with(engine, ["checkpoint", "rank"])
    assert all(isinstance(v, str) for row in rows for v in row), rows
    return rows


def _read_tokens_with(engine: str, columns: list[str]) -> list[tuple]:
    """The columns of every row of ``data/table=tokens`` as each documented line of docs/DATASET.md reads them."""
    if engine in ("pyarrow", "pandas"):
        import asynclog.tools.dataset

        table = asynclog.tools.dataset.table("data", "tokens").to_table()
        if engine == "pandas":
            frame = table.to_pandas()
            return list(zip(*(frame[c].tolist() for c in columns)))
        return list(zip(*(table[c].to_pylist() for c in columns)))
    if engine == "duckdb":
        return duckdb.sql("SELECT * FROM read_parquet('data/table=tokens/**/*.parquet', hive_partitioning=true, "
                          "hive_types_autocast=false, union_by_name=true)").select(*columns).fetchall()
    if engine == "polars":
        import glob

        import polars

        hive = {"table": polars.String, "checkpoint": polars.String, "rank": polars.String}
        frame = polars.concat([polars.scan_parquet(f, hive_partitioning=True, hive_schema=hive) for f in glob.glob(
            "data/table=tokens/**/*.parquet", recursive=True)], how="diagonal_relaxed").collect()
        return list(zip(*(frame[c].to_list() for c in columns)))
    import dask.dataframe
    import pyarrow

    hive = pyarrow.schema([("checkpoint", pyarrow.string()), ("rank", pyarrow.string())])
    frame = dask.dataframe.read_parquet("data/table=tokens", columns=["checkpoint", "rank", "run", "tokens"],
                                        dataset={"partitioning": {"flavor": "hive", "schema": hive}}).compute()
    return list(zip(*(frame[c].tolist() for c in columns)))


def test_a_dataset_below_a_key_value_folder_is_refused(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "checkpoint=old" / "data"
    one_sequence(logs / "a.alog")
    done = export_to(logs, out)
    assert done.returncode == 3 and "checkpoint=old" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not out.exists()


def test_a_per_token_column_one_short_is_aligned_to_the_last_tokens(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "dataset"
    one_sequence(logs / "a.alog", tokens=4, logprobs=torch.tensor([-1.0, -2.0, -3.0]))  # scores tokens 1..3
    done = export_to(logs, out)
    assert done.returncode == 0, done.stderr
    assert sql(out, "select position, tokens, logprobs from tokens order by position") == [
        (0, 0, None), (1, 1, -1.0), (2, 2, -2.0), (3, 3, -3.0)]


def log_untabulable(logs) -> None:
    """Runs a table cannot hold, sorted before a good one: a column whose type changes between chunks, one of
    mixed types in a chunk, and a per-token column longer than the tokens."""
    with asynclog.start(logs, name="a_drift") as run:
        sequences = run.stream("sequences/E_batch", chunk_rows=1)
        sequences.append(sequence_id=0, judge=1)
        sequences.append(sequence_id=1, judge="good")
    with asynclog.start(logs, name="b_mixed") as run:
        sequences = run.stream("sequences/E_batch", chunk_rows=2)
        sequences.append(sequence_id=0, judge=1)
        sequences.append(sequence_id=1, judge="good")
    one_sequence(logs / "c_long.alog", tokens=2, logprobs=torch.tensor([-1.0, -2.0, -3.0]))
    one_sequence(logs / "d_good.alog", tokens=5)


def test_a_run_that_cannot_be_tabulated_is_skipped_by_name_and_the_others_export(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "dataset"
    log_untabulable(logs)
    for _ in range(2):  # and again: the good run stays, the others are named each time
        done = export_to(logs, out)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        lines = done.stderr.strip().splitlines()
        assert [[n for n in ("a_drift", "b_mixed", "c_long") if n in line] for line in lines] == [
            ["a_drift"], ["b_mixed"], ["c_long"]], lines
        assert sql(out, "select run_name from runs") == [("d_good",)] and count(out) == 5


def query(out, statement: str) -> subprocess.CompletedProcess:
    return asynclog_cli("query", str(out), statement)


@pytest.fixture(scope="module")
def drifting(tmp_path_factory):
    """A dataset of two runs whose sequences' ``judge`` and ``score`` columns have other types in each run."""
    folder = tmp_path_factory.mktemp("drift")
    for name, judge, score in (("a", 1, 2), ("b", "good", 2.5)):
        one_sequence(folder / "logs" / f"{name}.alog", stream="sequences/E_batch", judge=judge, score=score)
    assert export_to(folder / "logs", folder / "data").returncode == 0
    return folder / "data"


@pytest.mark.parametrize("statement", ["select cast(run || 'x' as integer) from runs",
                                       "select error('boom') from runs",
                                       "select sum(judge::integer) from sequences"])  # 1 in one run, good in the other
def test_a_query_that_fails_while_it_runs_is_one_line_and_exit_3(drifting, statement):
    done = query(drifting, statement)
    assert done.returncode == 3 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_table_reads_every_column_whose_type_differs_between_runs(drifting):
    import asynclog.tools.dataset

    table = asynclog.tools.dataset.table(drifting, "sequences").to_table()
    assert table.schema.field("score").type == "double" and table.schema.field("judge").type == "string"
    assert sorted(zip(table["judge"].to_pylist(), table["score"].to_pylist())) == [("1", 2.0), ("good", 2.5)]


KILLED_EXPORT_RUNS = 6


@pytest.fixture(scope="module")
def big_logs(tmp_path_factory):
    """Runs enough for an export to take a while: each a tokens stream of 200 k tokens."""
    folder = tmp_path_factory.mktemp("big")
    g = torch.Generator().manual_seed(5)
    for k in range(KILLED_EXPORT_RUNS):
        with asynclog.start(folder, name=f"step_{k}") as run:
            stream = run.stream("tokens/E_batch", chunk_rows=64)
            for i in range(400):
                stream.append(sequence_id=i, tokens=torch.randint(0, 151_000, (500,), generator=g),
                              token_logprobs=-torch.rand(500, generator=g))
    return folder


def count_parts(folder) -> int:
    return sum(f.endswith(".parquet") for _, _, files in os.walk(folder) for f in files)


def _temporary_files(folder) -> list[str]:
    return [f for _, _, files in os.walk(folder) for f in files if f.endswith(".tmp")]


def kill_midway(logs, out) -> bool:
    """Start an export of ``logs`` into ``out`` and kill -9 it while it writes a part (after one part is whole,
    staged or in the tables); whether it was killed so (False: it ended first)."""
    import signal

    export = subprocess.Popen([sys.executable, "-m", "asynclog", "export", str(logs), "--dataset", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, mine = time.monotonic() + 60, f".{export.pid}."
    while export.poll() is None and time.monotonic() < deadline and not (
            any(mine in f for f in _temporary_files(out)) and count_parts(out)):
        time.sleep(0.001)
    os.kill(export.pid, signal.SIGKILL)
    return export.wait() == -signal.SIGKILL and any(mine in f for f in _temporary_files(out))


def whole_runs_read(out, rows_per_run: int) -> bool:
    """Whether ``table()`` reads each run's tokens whole or not at all (none yet, when no run was merged)."""
    import asynclog.tools.dataset

    if not asynclog.tools.dataset.table_files(out, "tokens"):
        return True
    runs = asynclog.tools.dataset.table(out, "tokens").to_table(columns=["run"]).column("run").to_pylist()
    return set(Counter(runs).values()) == {rows_per_run}


def test_an_export_killed_midway_leaves_parts_no_reader_takes_and_the_next_export_completes(big_logs, tmp_path, full):
    out = tmp_path / "dataset"
    assert kill_midway(big_logs, out), "the export ended before it could be killed mid-way"
    assert whole_runs_read(out, 400 * 500)  # its stale part is not read
    for _ in range(8 if full else 0):  # --full: the exports that finish it are killed too, as long as they write
        if not kill_midway(big_logs, out):
            break
        assert whole_runs_read(out, 400 * 500)
    done = export_to(big_logs, out)
    assert done.returncode == 0, done.stderr
    assert not _temporary_files(out)
    assert count(out, "runs") == KILLED_EXPORT_RUNS and count(out) == KILLED_EXPORT_RUNS * 400 * 500


def test_a_run_whose_file_name_is_not_utf8_is_exported(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "dataset"
    os.rename(one_sequence(logs / "plain.alog"), os.fsencode(logs) + b"/bad\xff.alog")
    done = export_to(logs, out)
    assert done.returncode == 0, done.stderr
    assert sql(out, "select run_name from runs") == [("bad\\xff",)] and count(out) == 6
    again = export_to(logs, out)
    assert again.returncode == 0 and again.stdout == "", again.stderr  # its state was saved: nothing to redo


# --- packs: few files per table and partition, however many runs -------------------------------------------
def files_of(out, table: str = "tokens") -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), out) for d, _, files in os.walk(out / f"table={table}")
                  for f in files)


def tokens_by_name(out) -> dict[str, int]:
    return dict(sql(out, "select r.run_name, count(*) from tokens t join runs r using (run) group by 1"))


def test_many_runs_of_one_checkpoint_are_one_file_per_table_and_each_run_once(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "dataset"
    for k in range(12):
        one_sequence(logs / f"seed{k:02d}" / "step_1.alog", tokens=k + 1)
    assert export_to(logs, out).returncode == 0
    assert len(files_of(out)) == 1 and len(files_of(out, "runs")) == 1
    assert tokens_by_name(out) == {f"seed{k:02d}/step_1": k + 1 for k in range(12)}


def test_a_later_export_replaces_removes_and_adds_runs_inside_a_pack_exactly(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "dataset"
    for k in range(6):
        one_sequence(logs / f"seed{k}" / "step_1.alog", tokens=k + 1)
    assert export_to(logs, out).returncode == 0
    os.unlink(logs / "seed0" / "step_1.alog")  # removed
    os.unlink(logs / "seed1" / "step_1.alog")  # replaced: another run at the same path
    one_sequence(logs / "seed1" / "step_1.alog", tokens=20)
    os.renames(logs / "seed2", logs / "moved" / "seed2")  # moved
    one_sequence(logs / "seed9" / "step_1.alog", tokens=9)  # added
    done = export_to(logs, out)
    assert done.returncode == 0, done.stderr
    assert tokens_by_name(out) == {"seed1/step_1": 20, "moved/seed2/step_1": 3, "seed3/step_1": 4,
                                   "seed4/step_1": 5, "seed5/step_1": 6, "seed9/step_1": 9}
    assert count(out, "runs") == 6 and len(files_of(out)) == 1 and len(files_of(out, "runs")) == 1
    before = parquet_mtimes(out)
    again = export_to(logs, out)
    assert again.returncode == 0 and parquet_mtimes(out) == before  # nothing changed, nothing written


def test_runs_whose_columns_do_not_unify_share_no_pack_and_read_as_one_table(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "dataset"
    for name, judge in (("a", 1), ("b", "good"), ("c", 2)):
        one_sequence(logs / name / "step_1.alog", stream="sequences/E_batch", judge=judge)
    assert export_to(logs, out).returncode == 0
    assert len(files_of(out, "sequences")) == 2  # a and c together, b apart
    assert sorted(sql(out, "select judge from sequences")) == [("1",), ("2",), ("good",)]


@pytest.fixture(scope="module")
def packed_logs(tmp_path_factory):
    """Runs of one checkpoint, large enough that merging them into a pack takes a while: 12 of 60 k tokens."""
    folder = tmp_path_factory.mktemp("packed")
    g = torch.Generator().manual_seed(7)
    for k in range(12):
        with asynclog.start(path=folder / f"seed{k:02d}" / "step_1.alog") as run:
            stream = run.stream("tokens/E_batch", chunk_rows=64)
            for i in range(120):
                stream.append(sequence_id=i, tokens=torch.randint(0, 151_000, (500,), generator=g),
                              token_logprobs=-torch.rand(500, generator=g))
    return folder


def kill_while_packing(logs, out, delay: float = 0.0) -> bool:
    """Start an export and kill -9 it ``delay`` s after it begins writing a pack into the tokens table (a temporary
    file there: staged runs are written beside the tables); whether it was killed so."""
    import signal

    export = subprocess.Popen([sys.executable, "-m", "asynclog", "export", str(logs), "--dataset", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, mine = time.monotonic() + 60, f".{export.pid}."
    while export.poll() is None and time.monotonic() < deadline and not any(
            mine in f for f in _temporary_files(out / "table=tokens")):
        time.sleep(0.001)
    time.sleep(delay)
    if export.poll() is not None:
        return False
    os.kill(export.pid, signal.SIGKILL)
    return export.wait() == -signal.SIGKILL


def test_a_compaction_killed_midway_leaves_each_run_once_and_the_next_export_finishes_it(packed_logs, tmp_path,
                                                                                        full):
    logs, out = tmp_path / "logs", tmp_path / "dataset"
    for k in range(6):  # the first half exported whole; the second half comes with the export that is killed
        shutil.copytree(packed_logs / f"seed{k:02d}", logs / f"seed{k:02d}")
    assert export_to(logs, out).returncode == 0
    for k in range(6, 12):
        shutil.copytree(packed_logs / f"seed{k:02d}", logs / f"seed{k:02d}")
    assert kill_while_packing(logs, out), "the export ended before it could be killed while packing"
    glob = f"{out}/table=tokens/**/*.parquet"
    for read in (lambda: sql(out, "select run, count(*) from tokens group by run"),
                 lambda: duckdb.sql(f"select run, count(*) from read_parquet('{glob}') group by run").fetchall()):
        assert sorted(n for _, n in read()) == [120 * 500] * 6  # the pack before, whole; the new one not read
    for delay in (0.05, 0.1, 0.2, 0.3, 0.5, 0.8) if full else ():  # --full: killed later, up to its end
        if kill_while_packing(logs, out, delay):
            assert set(n for _, n in sql(out, "select run, count(*) from tokens group by run")) == {120 * 500}
    done = export_to(logs, out)
    assert done.returncode == 0, done.stderr
    assert not _temporary_files(out) and not os.path.exists(out / "_asynclog_staging")
    assert sorted(n for _, n in sql(out, "select run, count(*) from tokens group by run")) == [120 * 500] * 12
    assert len(files_of(out)) == 1 and count(out, "runs") == 12


def test_a_pack_someone_removed_has_its_runs_written_again_by_the_next_export(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "dataset"
    for k in range(3):
        one_sequence(logs / f"seed{k}" / "step_1.alog", tokens=k + 1)
    assert export_to(logs, out).returncode == 0
    [pack] = files_of(out)
    os.unlink(out / pack)
    done = export_to(logs, out)
    assert done.returncode == 0, done.stderr
    assert tokens_by_name(out) == {f"seed{k}/step_1": k + 1 for k in range(3)} and len(files_of(out)) == 1


def copies_of(path, folder, n: int) -> None:
    """``n`` runs made of the bytes of the run at ``path``, each with another start time in its header frame: each
    its own identity, as ``dataset.run_identity`` hashes that frame (a plain copy would be held once)."""
    from asynclog import _format as fmt
    from asynclog._ondisk import first_frame

    first = first_frame(path)
    with open(path, "rb") as f:
        rest = f.read()[len(first):]
    folder.mkdir(parents=True, exist_ok=True)
    header = fmt.decode_meta(first[fmt.PREAMBLE_SIZE + fmt.HEADER_SIZE:-4])
    for k in range(n):
        start = fmt.log_start(fmt.encode_meta({**header, "created": header["created"] + k + 1}))
        assert len(start) == len(first)
        (folder / f"copy{k:04d}.alog").write_bytes(start + rest)


def test_a_pack_of_more_runs_than_the_export_may_open_files_is_written(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "dataset"
    copies_of(one_sequence(tmp_path / "step_1.alog", tokens=3), logs, 300)
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200)); "
              "from asynclog.tools.dataset import export_dataset; export_dataset(sys.argv[1], sys.argv[2])")
    done = subprocess.run([sys.executable, "-c", script, str(logs), str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert count(out, "runs") == 300 and count(out) == 900 and len(files_of(out)) == 1
