"""``asynclog export RUN|DIR --to wandb -o OUT``: a sweep's checkpoints as an offline Weights & Biases run.

Each sweep (``dashboards.sweeps``) becomes one offline run written by wandb's own SDK (``wandb.init(mode=
"offline")``; ``pip install 'asynclog[wandb]'``), in ``OUT/wandb/offline-run-<time>-<id>``, which ``wandb sync``
uploads later from a machine with a network. Per checkpoint, at its step (``dashboards.Checkpoint``): each
scalar, a ``wandb.Histogram`` of each batch's token entropies and log-probabilities, and each batch's sequences
as a ``wandb.Table``. The run is named after its sweep, in project ``asynclog`` (``wandb sync -p PROJECT`` puts
it elsewhere); console capture, system metrics and code saving are off: the run is a finished log, not a job.

Unlike TensorBoard's event files, an offline run cannot be read back in Python: wandb keeps it in its own
record log (``run-<id>.wandb``), read only by its ``wandb-core`` binary when it syncs (its Python reader was
removed in wandb 0.19). tests/test_wandb.py reads it with wandb's own protobuf messages.
"""

from __future__ import annotations

import os

from asynclog._files import makedirs
from asynclog._tables import need
from asynclog.tools.dashboards import Checkpoint, checkpoints, sweeps

__all__ = ["export_wandb", "PROJECT", "HISTOGRAM_BINS"]

PROJECT = "asynclog"
HISTOGRAM_BINS = 64  # wandb's own limit is 512


def export_wandb(path: str | os.PathLike, out: str | os.PathLike) -> list[str]:
    """Write the runs at ``path`` as offline wandb runs below ``out``; return their folders (for ``wandb sync``)."""
    wandb = need("wandb", "wandb")
    out = os.fspath(out)
    makedirs(out)
    written = []
    for sweep, runs in sweeps(path).items():
        settings = wandb.Settings(mode="offline", silent=True, console="off", x_disable_stats=True,
                                  save_code=False, disable_git=True, disable_job_creation=True)
        run = wandb.init(dir=out, project=PROJECT, name=sweep, settings=settings)
        try:
            for checkpoint in checkpoints(runs):
                run.log(_values(wandb, checkpoint), step=checkpoint.step)
        finally:
            run.finish()
        written.append(os.path.dirname(run.dir))
    return written


def _values(wandb, checkpoint: Checkpoint) -> dict:
    values: dict = dict(checkpoint.scalars)
    values.update({tag: wandb.Histogram(v, num_bins=HISTOGRAM_BINS) for tag, v in checkpoint.histograms.items()})
    values.update({tag: wandb.Table(columns=t.columns, data=t.rows) for tag, t in checkpoint.tables.items()})
    return values
