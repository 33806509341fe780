"""``asynclog plot``: PNGs of a sweep (from its summaries) and of one run (from its streams and tensors)."""

from __future__ import annotations

import glob
import json
import shutil
import struct
import subprocess
import sys

import pytest
import torch

import asynclog
from asynclog.cli import main as cli_main
from asynclog.tools import export
from asynclog.tools import plots
from conftest import adapter_sweep, old_adapter_run

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; fails unless the file starts as a PNG must."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_MAGIC and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real demo sweep of two checkpoints at debug level."""
    out = tmp_path_factory.mktemp("sweep") / "logs"
    done = subprocess.run([sys.executable, "-m", "asynclog", "demo", "--size", "tiny", "--checkpoints", "2",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def plot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asynclog", "plot", *args], capture_output=True, text=True,
                          timeout=120)


def test_a_sweep_folder_gives_one_png_of_the_checkpoints(sweep, tmp_path):
    done = plot(str(sweep), "-o", str(tmp_path / "figs"))
    assert done.returncode == 0, done.stderr
    [path] = done.stdout.split()
    assert path == str(tmp_path / "figs" / "sweep.png")
    assert png_size(path) == plots.SWEEP_PIXELS


def test_one_run_gives_token_length_and_weight_histograms(sweep, tmp_path, capsys):
    run = sorted(glob.glob(str(sweep / "*" / "*.alog")))[0]
    assert cli_main(["plot", run, "-o", str(tmp_path)]) == 0
    written = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[1] for p in written] == [f"{name}.png" for name in plots.RUN_PLOTS]
    assert all(png_size(p) == plots.RUN_PIXELS for p in written)


def test_sweep_points_come_from_the_summaries(sweep):
    points = plots.sweep_points(str(sweep))
    assert len(points) == 2 and [p["checkpoint"] for p in points] == ["step_000", "step_001"]
    assert all(p["deltaH1"] == p["deltaH1"] and 0 < p["ESS"] and p["w_max"] >= 1 and p["timing"] for p in points)


def test_a_folder_without_summaries_is_one_clear_line(tmp_path):
    done = plot(str(tmp_path), "-o", str(tmp_path / "figs"))
    assert done.returncode == 3 and "no *_summary.json" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def sweep_with_ranks(sweep, tmp_path_factory):
    """The demo sweep and a run folder of two ranks, each rank with its tokens and sequences streams and the
    summary a DetailedLogger leaves beside its shard (the demo's, for checkpoint step_002, δH₁ of its own)."""
    folder = tmp_path_factory.mktemp("ranks") / "logs"
    shutil.copytree(sweep, folder)
    [summary] = glob.glob(str(folder / "*" / "*step_000_summary.json"))
    g = torch.Generator().manual_seed(5)
    for rank in range(2):
        with asynclog.start(folder, name="job", rank=rank, world_size=2) as run:
            tokens, sequences = run.stream("tokens/E_batch"), run.stream("sequences/E_batch")
            for i in range(6):
                n = 2 + i
                tokens.append(sequence_id=i, rb_entropies=torch.rand(n, generator=g),
                              token_logprobs=-torch.rand(n, generator=g))
                sequences.append(sequence_id=i, generation_length=n)
        with open(summary, encoding="utf-8") as f:
            data = json.load(f)
        data["run_metadata"].update(checkpoint_path="toy/tiny/step_002", checkpoint_name="step_002")
        data["core_results"]["deltaH1"] = 0.5 + rank
        with open(folder / "job" / f"rank-{rank:05d}_summary.json", "w", encoding="utf-8") as f:
            json.dump(data, f)
    return folder


def test_a_run_folder_of_ranks_is_one_checkpoint_of_the_sweep(sweep_with_ranks, tmp_path):
    points = plots.sweep_points(str(sweep_with_ranks))
    assert [p["checkpoint"] for p in points] == ["step_000", "step_001", "step_002"]
    assert points[2]["deltaH1"] == 0.5  # rank 0's summary, as asynclog sweep reads it
    done = plot(str(sweep_with_ranks), "-o", str(tmp_path))
    assert done.returncode == 0 and done.stdout.split() == [str(tmp_path / "sweep.png")], done.stderr


def test_a_run_folder_of_ranks_plots_as_one_run_of_every_rank(sweep_with_ranks, tmp_path, capsys):
    assert cli_main(["plot", str(sweep_with_ranks / "job"), "-o", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert [p.rsplit("/", 1)[1] for p in out.split()] == ["token_entropy.png", "token_logprob.png",
                                                          "sequence_length.png"]
    assert "importance_weight" in err and "level" in err
    with asynclog.open(sweep_with_ranks / "job") as log:
        assert plots._token_values(log, "rb_entropies").size == 2 * sum(range(2, 8))  # both ranks' tokens


def test_a_sweep_of_model_folders_plots_one_column_per_checkpoint(tmp_path, monkeypatch):
    checkpoints = str(tmp_path / "checkpoints")
    adapter_sweep(tmp_path / "logs", checkpoints)
    old_adapter_run(tmp_path / "logs", f"{checkpoints}/step_240/model")
    columns = {}
    save = plots._save

    def keep_columns(plt, fig, path):
        written = save(plt, fig, path)  # drawn: the tick labels are set
        columns.update({ax.get_title(): [t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes[1:]})
        return written

    monkeypatch.setattr(plots, "_save", keep_columns)
    plots.plot_sweep(str(tmp_path / "logs"), str(tmp_path))
    expected = ["step_60", "step_120", "step_180", "step_240"]
    assert columns == dict.fromkeys(["effective sample size", "largest importance weight", "time per phase"], expected)
