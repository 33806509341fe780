"""``asynclog export --to tensorboard``: a demo sweep written as event files, read back with TensorBoard's own
EventAccumulator and checked against the runs' summaries and streams."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import asynclog
from asynclog.cli import main
from asynclog.tools.dashboards import TEXT_ROWS, steps
from asynclog.tools.tensorboard import export_tensorboard

pytest.importorskip("tensorboard", reason="export --to tensorboard needs the tensorboard extra")
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> str:
    """Two checkpoints of the demo probe at the debug level: summaries, token streams and sequence texts."""
    out = tmp_path_factory.mktemp("sweep")
    subprocess.run([sys.executable, "-m", "asynclog", "demo", "--size", "tiny", "--level", "debug",
                    "--checkpoints", "2", "--out", str(out)], check=True, capture_output=True, timeout=300)
    return str(out)


@pytest.fixture(scope="module")
def exported(sweep, tmp_path_factory) -> str:
    """The sweep exported by the console script, as a user would; the folder it printed."""
    done = subprocess.run([sys.executable, "-m", "asynclog", "export", sweep, "--to", "tensorboard", "-o",
                           str(tmp_path_factory.mktemp("tb"))], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [folder] = done.stdout.split()
    return folder


def runs_of(sweep: str) -> list[str]:
    return sorted(glob.glob(os.path.join(sweep, "*", "*.alog")))


def summary(run: str) -> dict:
    return json.load(open(run.removesuffix(".alog") + "_summary.json"))


def accumulator(folder: str):
    found = event_accumulator.EventAccumulator(folder, size_guidance={event_accumulator.TENSORS: 0})
    found.Reload()
    return found


def values(acc, tag: str) -> dict[int, np.ndarray]:
    return {e.step: tensor_util.make_ndarray(e.tensor_proto) for e in acc.Tensors(tag)}


def test_export_writes_a_tensorboard_run_per_sweep_with_each_checkpoint_at_its_step(sweep, exported):
    acc = accumulator(exported)
    runs = runs_of(sweep)
    assert steps([os.path.basename(r) for r in runs]) == [0, 1]  # step_000, step_001
    deltas = values(acc, "core/deltaH1")
    ess = values(acc, "diagnostics/ESS")
    total = values(acc, "timing/total_time")
    for step, run in enumerate(runs):
        s = summary(run)
        assert deltas[step] == pytest.approx(s["core_results"]["deltaH1"], rel=1e-6)
        assert ess[step] == pytest.approx(s["ground_truth"]["diagnostics"]["ESS"], rel=1e-6)
        assert total[step] == pytest.approx(s["timing"]["total_time"], rel=1e-6)


def test_token_entropy_and_logprob_histograms_hold_every_token(sweep, exported):
    acc = accumulator(exported)
    for step, run in enumerate(runs_of(sweep)):
        with asynclog.open(run) as log:
            tokens = log.tokens("E_batch")
        for tag, column in (("tokens/E_batch/entropy", "rb_entropies"), ("tokens/E_batch/logprob", "token_logprobs")):
            buckets = values(acc, tag)[step]  # rows of (left edge, right edge, count)
            expected = tokens[column].dropna().to_numpy(dtype="float64")
            assert buckets[:, 2].sum() == len(expected)
            assert buckets[0, 0] == pytest.approx(expected.min(), rel=1e-6)
            assert buckets[-1, 1] == pytest.approx(expected.max(), rel=1e-6)


def test_sequence_texts_are_a_markdown_table_of_the_batch(sweep, exported):
    text = values(accumulator(exported), "sequences/E_batch")[0].item().decode()
    with asynclog.open(runs_of(sweep)[0]) as log:
        sequences = log.sequences("E_batch")
    shown = min(len(sequences), TEXT_ROWS)
    assert f"{shown} of {len(sequences)} sequences" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "response_text" not in line]
    assert len(rows) == shown
    assert sequences["response_text"][0] in rows[0]


def test_exporting_again_replaces_the_earlier_event_file(sweep, tmp_path):
    for _ in range(2):
        [folder] = export_tensorboard(sweep, tmp_path / "tb")
    assert len(glob.glob(os.path.join(folder, "events.out.tfevents.*"))) == 1
    assert sorted(values(accumulator(folder), "core/deltaH1")) == [0, 1]


def test_tensorboard_export_without_an_output_folder_is_a_usage_error(sweep, capsys):
    assert main(["export", sweep, "--to", "tensorboard"]) == 3
    assert "give -o FOLDER" in capsys.readouterr().err
