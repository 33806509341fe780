"""``asynclog plot RUN|DIR -o FOLDER``: PNGs of a sweep or of one run, drawn with matplotlib (Agg).

A folder is a sweep: every run below it that ``asynclog sweep`` lists and that has a ``*_summary.json`` is
one checkpoint (a run folder of ranks is one run, read from rank 0's summary, as ``sweep`` reads it), and
``sweep.png`` shows δH₁ against δH_true with the y = x line, ESS and w_max per checkpoint, and per-phase
timing (summaries only: fast for many runs). A ``.alog`` file, or a run folder of ranks, is one run:
``token_entropy.png`` and ``token_logprob.png`` (real response tokens of every ``tokens/*`` stream, every
rank's), ``sequence_length.png`` (``generation_length`` of every ``sequences/*`` stream) and
``importance_weight.png`` (the ``E_batch/importance_weights`` tensor of every rank, else the ``importance/*``
streams). A plot whose data the run's level did not log is skipped with a note on stderr.
"""

from __future__ import annotations

import errno
import math
import os
import sys

from asynclog.errors import PlotError

__all__ = ["plot", "sweep_points", "SWEEP_PIXELS", "RUN_PIXELS", "RUN_PLOTS"]

DPI = 100
SWEEP_PIXELS = (900, 675)
RUN_PIXELS = (640, 480)
RUN_PLOTS = ("token_entropy", "token_logprob", "sequence_length", "importance_weight")


def _pyplot():
    from asynclog._tables import need

    matplotlib = need("matplotlib", "plot")
    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    return plt


def _figure(plt, pixels, **kwargs):
    return plt.subplots(figsize=(pixels[0] / DPI, pixels[1] / DPI), dpi=DPI, **kwargs)


def _save(plt, fig, path: str) -> str:
    fig.savefig(path, dpi=DPI)  # no bbox_inches="tight": the size stays what was asked
    plt.close(fig)
    return path


# --- a sweep --------------------------------------------------------------------------------------------
def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _point(facts) -> dict:
    """A run's point: its numbers from its row of the sweep table, its phases' timing from its summary."""
    from asynclog.tools.analysis import row

    sweep_row = row(facts)
    timing = {k: _number(v) for k, v in (facts.summary.get("timing") or {}).items() if k != "total_time"}
    # A phase the probe reports itself (phase0_sampling) is also timed by DetailedLogger (phase0_sampling_time):
    # stacked, it would count twice.
    timing = {k: v for k, v in timing.items() if not (k.endswith("_time") and k.removesuffix("_time") in timing)}
    return {"checkpoint": sweep_row["checkpoint"], "timing": timing,
            **{k: _number(sweep_row[k]) for k in ("deltaH1", "deltaH_true", "ESS", "w_max")}}


def sweep_points(folder: str) -> list[dict]:
    """One point per run below ``folder`` with a summary (the runs ``asynclog sweep`` lists; a run folder of
    ranks is one), ordered by checkpoint; a summary that cannot be read is skipped with a note."""
    from asynclog.tools.analysis import find_logs, natural_key, read_run

    points = []
    for path in find_logs(folder):
        facts = read_run(path)
        for problem in facts.problems:
            print(f"asynclog plot: skipped {path}: {problem}", file=sys.stderr)
        if isinstance(facts.summary, dict):
            points.append(_point(facts))
    return sorted(points, key=lambda p: natural_key(p["checkpoint"]))  # step_60 before step_120


def plot_sweep(folder: str, out: str) -> list[str]:
    points = sweep_points(folder)
    if not points:
        raise PlotError(f"no *_summary.json beside any run below {folder}: point plot at a run's .alog or a "
                        f"sweep's folder")
    plt = _pyplot()
    fig, ((deltas, ess), (wmax, timing)) = _figure(plt, SWEEP_PIXELS, nrows=2, ncols=2)
    names = [p["checkpoint"] for p in points]
    _deltas(deltas, points)
    ess.plot(names, [p["ESS"] for p in points], "o-")
    ess.set(title="effective sample size", ylabel="ESS")
    ess.ticklabel_format(axis="y", useOffset=False)  # ESS near B_E: an offset axis hides the value
    wmax.plot(names, [p["w_max"] for p in points], "o-", color="tab:red")
    wmax.set(title="largest importance weight", ylabel="w_max")
    _timing(timing, points)
    for ax in (ess, wmax, timing):
        ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    return [_save(plt, fig, os.path.join(out, "sweep.png"))]


def _deltas(ax, points: list[dict]) -> None:
    x, y = [p["deltaH_true"] for p in points], [p["deltaH1"] for p in points]
    ax.scatter(x, y)
    for p in points:
        ax.annotate(p["checkpoint"], (p["deltaH_true"], p["deltaH1"]), fontsize=7, alpha=0.7)
    finite = [v for v in x + y if math.isfinite(v)] or [0.0, 1.0]
    low, high = min(finite), max(finite)
    ax.plot([low, high], [low, high], "k--", linewidth=0.8, label="y = x")
    ax.set(title="first-order prediction vs truth", xlabel="δH_true", ylabel="δH₁")
    ax.legend(loc="best", fontsize=8)


def _timing(ax, points: list[dict]) -> None:
    phases = list(dict.fromkeys(k for p in points for k in p["timing"]))
    names, bottom = [p["checkpoint"] for p in points], [0.0] * len(points)
    for phase in phases:
        heights = [p["timing"].get(phase, 0.0) if math.isfinite(p["timing"].get(phase, 0.0)) else 0.0 for p in points]
        ax.bar(names, heights, bottom=bottom, label=phase)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set(title="time per phase", ylabel="seconds")
    ax.legend(loc="best", fontsize=7)


# --- one run --------------------------------------------------------------------------------------------
def _token_values(log, column: str):
    import numpy as np

    from asynclog._tables import to_numpy

    parts = []
    for name in (n for n in log.stream_names() if n.startswith("tokens/")):
        for chunk in log.stream(name):
            if column not in chunk.columns:
                break
            masks = chunk.columns.get("attention_mask") or [None] * chunk.rows
            for values, mask in zip(chunk[column], masks):
                values = to_numpy(values)
                parts.append(values if mask is None else values[to_numpy(mask).astype(bool)[: len(values)]])
    return np.concatenate(parts) if parts else None


def _column_values(log, prefix: str, column: str):
    values = [row[column] for name in log.stream_names() if name.startswith(prefix)
              for row in log.rows(name) if row.get(column) is not None]
    return values or None


def _importance_weights(log):
    import numpy as np

    from asynclog._tables import shards_of, to_numpy

    name = "E_batch/importance_weights"  # every rank's: each weighs its own part of the E batch
    found = [to_numpy(shard.tensor(name)).reshape(-1) for _, shard in shards_of(log) if name in shard.tensor_names()]
    if found:
        return np.concatenate(found)
    return _column_values(log, "importance/", "importance_weight")


_RUN_DATA = {
    "token_entropy": (lambda log: _token_values(log, "rb_entropies"), "token entropy (real response tokens)", "nats"),
    "token_logprob": (lambda log: _token_values(log, "token_logprobs"), "token log-probability", "log p"),
    "sequence_length": (lambda log: _column_values(log, "sequences/", "generation_length"),
                        "generated sequence length", "tokens"),
    "importance_weight": (_importance_weights, "importance weight (E batch)", "w"),
}


def _level(log) -> str | None:
    """The level the run logged at (rank 0's, or the first readable rank's, for a run folder)."""
    from asynclog._tables import shards_of

    shards = shards_of(log)
    return shards[0][1].header.get("level") if shards else None


def plot_run(path: str, out: str) -> list[str]:
    from asynclog._shards import open_log

    written = []
    with open_log(path) as log:
        level = _level(log)
        for name in RUN_PLOTS:
            load, title, xlabel = _RUN_DATA[name]
            values = load(log)
            if values is None or len(values) == 0:
                print(f"asynclog plot: no data for {name} in {path} (not logged at level {level!r})",
                      file=sys.stderr)
                continue
            plt = _pyplot()
            fig, ax = _figure(plt, RUN_PIXELS)
            ax.hist(values, bins=min(50, max(5, int(len(values) ** 0.5))))
            ax.set(title=f"{title}, n = {len(values)}", xlabel=xlabel, ylabel="count")
            fig.tight_layout()
            written.append(_save(plt, fig, os.path.join(out, f"{name}.png")))
    if not written:
        raise PlotError(f"nothing to plot in {path}: its level logs no streams or tensors (use detailed or debug)")
    return written


def plot(target: str, out: str) -> list[str]:
    """Plot a sweep (a folder) or one run (a .alog file or a run folder of ranks) into ``out``; return the
    PNGs written."""
    from asynclog._shards import is_run_folder

    if not os.path.exists(target):
        raise FileNotFoundError(errno.ENOENT, "no such file or folder", target)  # exit 4, as for every command
    os.makedirs(out, exist_ok=True)
    if os.path.isdir(target) and not is_run_folder(target):
        return plot_sweep(target, out)
    return plot_run(target, out)
