"""The reader's mistakes are loud and helpful: chunks iterate like the mappings they index like, a misspelt
event name warns with close names, a missing tensor or stream lists the names that exist."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

import asynclog
from asynclog._session import NameTakenWarning


@pytest.fixture(scope="module")
def log_path(tmp_path_factory):
    with asynclog.start(tmp_path_factory.mktemp("logs"), name="reader") as run:
        run.event("core_results", deltaH1=1.0)
        run.event("ground_truth", ess=3.0)
        run.tensor("E_batch/S_orig", torch.arange(4.0))
        run.tensor("E_batch/S_new", torch.arange(3.0))
        stream = run.stream("tokens/E_batch", chunk_rows=2)
        for i in range(3):
            stream.append(sequence_id=i, logprob=-float(i))
    return run.path


@pytest.fixture
def log(log_path):
    with asynclog.open(log_path) as log:
        yield log


def test_a_chunk_iterates_over_its_column_names_like_a_mapping(log):
    chunk = next(log.stream("tokens/E_batch"))
    assert list(chunk) == ["sequence_id", "logprob"] and len(chunk) == 2 and "logprob" in chunk
    assert dict(chunk.items())["sequence_id"] == [0, 1] and chunk.rows == 2


def test_a_missing_column_lists_the_columns(log):
    chunk = next(log.stream("tokens/E_batch"))
    with pytest.raises(KeyError, match="sequence_id"):
        chunk["sequence"]


def test_a_misspelt_event_name_warns_with_the_close_names(log):
    with pytest.warns(UserWarning, match="core_results"):
        assert list(log.events(name="core_result")) == []


def test_a_present_event_name_does_not_warn(log):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["data"] for r in log.events(name="core_results")] == [{"deltaH1": 1.0}]


def test_a_missing_tensor_lists_the_names_closest_first(log):
    with pytest.raises(KeyError) as caught:
        log.tensor("E_batch/S_ori")
    message = str(caught.value)
    assert message.index("'E_batch/S_orig'") < message.index("'E_batch/S_new'")


def test_a_missing_stream_lists_the_streams(log):
    with pytest.raises(KeyError, match="tokens/E_batch"):
        next(log.stream("tokens/E"))


def test_a_taken_run_name_warns_naming_both_paths(tmp_path):
    with asynclog.start(tmp_path, name="same") as first:
        with pytest.warns(NameTakenWarning) as caught:
            second = asynclog.start(tmp_path, name="same")
        second.close()
    message = str(caught[0].message)
    assert first.path in message and second.path in message and second.path.endswith("same-1.alog")
    assert os.path.exists(second.path)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run of two ranks, written side by side in this process, with events but no batch statistics."""
    out = tmp_path_factory.mktemp("ranks")
    runs = [asynclog.start(out, name="job", rank=rank, world_size=2) for rank in (0, 1)]
    for rank, run in enumerate(runs):
        run.event("step", step=rank)
        run.close()
    return out / "job"


def test_batch_statistics_of_a_run_without_them_are_empty_and_quiet(run_folder):
    with asynclog.open(run_folder) as log, warnings.catch_warnings():
        warnings.simplefilter("error")
        assert log.batch_statistics() == {}


def test_a_run_folder_warns_of_a_missing_name_as_one_shard_does(run_folder):
    with asynclog.open(run_folder) as log:
        shard = log.shard(0)
        with pytest.warns(UserWarning) as one:
            assert list(shard.events(type="nope", name="stp")) == []
        with pytest.warns(UserWarning) as every:
            assert list(log.events(type="nope", name="stp")) == []
    assert len(every) == 1
    assert str(every[0].message) == str(one[0].message).replace(shard.path, log.path)
    assert "'step'" in str(every[0].message)


# --- lookup columns -----------------------------------------------------------------------------------------
WORDS = {"column": "words", "keys": "ids", "table": "names", "key": "id", "value": "name"}


def lookup_log(logdir, table: bool = True) -> str:
    """A stream whose ``words`` are its ``ids`` looked up in the ``names`` table (written after the rows: a row
    of two ids and their names, then a row of one); id 4 is not in the table."""
    with asynclog.start(logdir, name="lookups") as run:
        rows = run.stream("rows", chunk_rows=2, lookups=[WORDS])
        rows.extend(lengths=[2, 3, 0], ids=torch.tensor([[1, 2, 0], [3, 3, 4], [0, 0, 0]]), n=[2, 3, 0])
        if table:
            names = run.stream("names", chunk_rows=1)
            names.append(id=[1, 2], name=["one", "two"])
            names.append(id=3, name="three")
    return run.path


def test_a_lookup_column_reads_each_key_through_its_table(logdir):
    with asynclog.open(lookup_log(logdir)) as log:
        chunks = list(log.stream("rows"))
        assert all("words" not in [c["name"] for c in chunk.meta["columns"]] for chunk in chunks)  # not stored
        assert [row["words"] for row in log.rows("rows")] == [["one", "two"], ["three", "three", None], []]
        assert list(chunks[0]) == ["ids", "n", "words"]


def test_a_lookup_whose_table_is_missing_reads_none(logdir):
    with asynclog.open(lookup_log(logdir, table=False)) as log:
        assert [row["words"] for row in log.rows("rows")] == [[None, None], [None, None, None], []]


def test_a_stored_column_reads_as_stored_without_a_table(logdir):
    """The layout of logs written before lookups (``token_texts`` stored per row) reads as it did."""
    with asynclog.start(logdir, name="stored") as run:
        run.stream("tokens/E_batch").append(tokens=torch.tensor([5, 6]), token_texts=["five", "six"])
    with asynclog.open(run.path) as log:
        [row] = log.rows("tokens/E_batch")
    assert row["token_texts"] == ["five", "six"] and row["tokens"].tolist() == [5, 6]


@pytest.mark.parametrize("data", [{"batch": "E", "aggregates": {"prompt_length": {}}},
                                  {"batch": "E", "aggregates": {}, "length_percentiles": 5, "num_prompts": "x"}])
def test_batch_statistics_records_that_do_not_merge_are_a_corrupt_log_error(tmp_path, data):
    """Records named batch_statistics that DetailedLogger did not write (a file from anyone): found writing the
    fuzz targets (tests/fuzz); merge_batch_statistics raised KeyError or TypeError."""
    runs = [asynclog.start(tmp_path, name="job", rank=rank, world_size=2) for rank in (0, 1)]
    for run in runs:
        run.event("batch_statistics", **data)
        run.close()
    with asynclog.open(tmp_path / "job") as log, pytest.raises(asynclog.CorruptLogError, match="do not merge"):
        log.batch_statistics()
