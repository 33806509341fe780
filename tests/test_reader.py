"""The reader's mistakes are loud and helpful: chunks iterate like the mappings they index like, a misspelt
event name warns with close names, a missing tensor or stream lists the names that exist."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

import asynclog
from asynclog.session import NameTakenWarning


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
