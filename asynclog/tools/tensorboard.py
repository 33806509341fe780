"""``asynclog export RUN|DIR --to tensorboard -o TB``: a sweep's checkpoints as TensorBoard event files.

Each sweep (``dashboards.sweeps``: a run alone, or the runs of each folder below DIR) becomes one TensorBoard
run, ``TB/<sweep>``, holding per checkpoint, at its step (``dashboards.Checkpoint``): a scalar per core result,
ground-truth value, diagnostic (ESS, ...) and timing; a histogram of each batch's token entropies and of its
log-probabilities; and each batch's sequences as a text table. Written with TensorBoard's own event writer and
summary protos (``pip install 'asynclog[tensorboard]'``; TensorFlow is not needed), so ``tensorboard --logdir
TB`` and its ``EventAccumulator`` read them as they read their own.

Exporting again replaces what an earlier export wrote there (its event files end in ``.asynclog``) and leaves
any other event file in the folder alone.
"""

from __future__ import annotations

import glob
import os
import time

from asynclog._files import makedirs
from asynclog._tables import need
from asynclog.tools.dashboards import Checkpoint, Table, checkpoints, sweeps

__all__ = ["export_tensorboard", "FILE_SUFFIX", "HISTOGRAM_BUCKETS"]

FILE_SUFFIX = ".asynclog"  # ends the name of each event file written here, so a new export can replace it
HISTOGRAM_BUCKETS = 60


def export_tensorboard(path: str | os.PathLike, out: str | os.PathLike) -> list[str]:
    """Write the runs at ``path`` below ``out``, one TensorBoard run per sweep; return the folders written."""
    writer_module = need("tensorboard.summary.writer.event_file_writer", "tensorboard")
    written = []
    for sweep, runs in sweeps(path).items():
        folder = os.path.normpath(os.path.join(os.fspath(out), sweep))
        makedirs(folder)
        for old in glob.glob(os.path.join(glob.escape(folder), f"events.out.tfevents.*{FILE_SUFFIX}")):
            os.unlink(old)
        writer = writer_module.EventFileWriter(folder, filename_suffix=FILE_SUFFIX)
        try:
            for checkpoint in checkpoints(runs):
                for summary in _summaries(checkpoint):
                    writer.add_event(_event(checkpoint, summary))
        finally:
            writer.close()
        written.append(folder)
    return written


def _event(checkpoint: Checkpoint, summary):
    event_pb2 = need("tensorboard.compat.proto.event_pb2", "tensorboard")
    return event_pb2.Event(wall_time=checkpoint.wall_time or time.time(), step=checkpoint.step, summary=summary)


def _summaries(checkpoint: Checkpoint):
    scalar = need("tensorboard.plugins.scalar.summary_v2", "tensorboard")
    histogram = need("tensorboard.plugins.histogram.summary_v2", "tensorboard")
    text = need("tensorboard.plugins.text.summary_v2", "tensorboard")
    for tag, value in checkpoint.scalars.items():
        yield scalar.scalar_pb(tag, value)
    for tag, values in checkpoint.histograms.items():
        yield histogram.histogram_pb(tag, values, buckets=HISTOGRAM_BUCKETS)
    for tag, table in checkpoint.tables.items():
        yield text.text_pb(tag, markdown(table, checkpoint.label))


def markdown(table: Table, label: str) -> str:
    """A table as the markdown TensorBoard's text view renders, with a line saying how many rows it leaves out."""
    lines = [f"checkpoint {label}: {len(table.rows)} of {table.total} sequences"
             + ("" if len(table.rows) == table.total else " (`asynclog export --to parquet --what sequences` "
                                                          "has them all)"), "",
             "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(_cell, r)) + " |" for r in table.rows]
    return "\n".join(lines)


def _cell(value) -> str:
    text = f"{value:.6g}" if isinstance(value, float) else "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")
