"""``asynclog plot``: PNGs of a sweep (from its summaries) and of one run (from its streams and tensors)."""

from __future__ import annotations

import glob
import struct
import subprocess
import sys

import pytest

from asynclog.cli import main as cli_main
from asynclog import export, plots

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
