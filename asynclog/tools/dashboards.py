"""Runs as a dashboard shows them: what ``export --to tensorboard`` and ``--to wandb`` write.

A dashboard plots values against a step; a sweep's runs are its checkpoints. ``sweeps(path)`` groups the runs
below a folder by the folder holding them (one dashboard run each: a sweep), or takes one run alone;
``checkpoints(paths)`` reads each as a ``Checkpoint`` at its step:

- the step is the number the checkpoint's label ends with (``step_060`` is 60), when every run of the sweep has
  a distinct one; otherwise the run's place in the sweep (0, 1, ...), in natural order;
- ``scalars``: its summary's core results (``core/deltaH1``), ground truth (``ground_truth/deltaH_true``),
  importance-sampling diagnostics (``diagnostics/ESS``) and timing (``timing/total_time``), numbers only; a run
  without a summary sidecar takes them from its last ``core_results`` and ``ground_truth`` events;
- ``histograms``: each batch's per-token entropies and log-probabilities (``tokens/E_batch/entropy``,
  ``tokens/E_batch/logprob``), every finite value of every token;
- ``tables``: each batch's sequences (texts, reward, log-prob, entropy), the first ``TEXT_ROWS`` of them:
  ``export --to parquet --what sequences`` has every one.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

from asynclog._ondisk import is_run_folder
from asynclog._shards import open_log
from asynclog._tables import is_tensor, to_numpy
from asynclog.tools.analysis import find_logs, natural_key, read_run, row

__all__ = ["Checkpoint", "Table", "sweeps", "checkpoints", "TEXT_ROWS"]

TEXT_ROWS = 100  # sequences per batch shown as text: a dashboard's text view slows down well before 2,048 rows
SEQUENCE_COLUMNS = ("sequence_id", "prompt_id", "response_id", "prompt_text", "response_text", "reward",
                    "advantage", "sequence_logprob", "rb_entropy")
TOKEN_VALUES = {"rb_entropies": "entropy", "token_logprobs": "logprob"}
_SCALAR_SECTIONS = (("core", ("core_results",)), ("ground_truth", ("ground_truth",)),
                    ("diagnostics", ("ground_truth", "diagnostics")), ("timing", ("timing",)))


class Table(NamedTuple):
    columns: list[str]
    rows: list[list]
    total: int  # sequences the batch has; ``rows`` holds the first TEXT_ROWS


class Checkpoint(NamedTuple):
    path: str
    label: str
    step: int
    wall_time: float | None
    scalars: dict[str, float]
    histograms: dict[str, Any]  # tag -> 1-d numpy array
    tables: dict[str, Table]


def sweeps(path: str | os.PathLike) -> dict[str, list[str]]:
    """The runs at ``path`` by sweep: a run alone under its own name, or every run below a folder grouped by
    the folder holding it, named by that folder relative to ``path`` (``.`` for ``path`` itself)."""
    path = os.fspath(path)
    if not os.path.isdir(path) or is_run_folder(path):
        return {os.path.basename(path.rstrip(os.sep)).removesuffix(".alog"): [path]}
    grouped: dict[str, list[str]] = {}
    for run in find_logs(path):
        grouped.setdefault(os.path.relpath(os.path.dirname(run), path), []).append(run)
    return grouped


def checkpoints(paths: list[str]) -> Iterator[Checkpoint]:
    """Each run of one sweep as a Checkpoint, read one at a time, in the order of their steps."""
    paths = sorted(paths, key=natural_key)
    facts = [read_run(p) for p in paths]
    labels = [row(f)["checkpoint"] or os.path.basename(p) for f, p in zip(facts, paths)]
    for step, path, fact, label in sorted(zip(steps(labels), paths, facts, labels), key=lambda found: found[0]):
        yield _checkpoint(path, fact, label, step)


def steps(labels: list[str]) -> list[int]:
    """Each label's trailing number when all have one and no two share it; else 0, 1, 2, ..."""
    numbers = [re.search(r"(\d+)\D*$", label) for label in labels]
    found = [int(m.group(1)) for m in numbers if m]
    if len(found) == len(labels) and len(set(found)) == len(found):
        return found
    return list(range(len(labels)))


def _checkpoint(path: str, facts, label: str, step: int) -> Checkpoint:
    with open_log(path) as log:
        summary = facts.summary or _summary_from_events(log)
        created = facts.header.get("created")
        return Checkpoint(path, label, step, created if isinstance(created, (int, float)) else None,
                          scalars(summary), _histograms(log), _tables(log))


def _summary_from_events(log) -> dict:
    """What a summary sidecar would hold of core results and ground truth, from the run's last such events."""
    found: dict = {}
    for record in log.events(type="event"):
        if record.get("name") in ("core_results", "ground_truth") and isinstance(record.get("data"), dict):
            found[record["name"]] = record["data"]
    return found


def scalars(summary: dict) -> dict[str, float]:
    """The summary's numbers a dashboard plots, tagged ``section/name`` (see the module docstring)."""
    out = {}
    for section, keys in _SCALAR_SECTIONS:
        values = summary
        for key in keys:
            values = values.get(key) if isinstance(values, dict) else None
        for name, value in (values or {}).items() if isinstance(values, dict) else ():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{section}/{name}"] = float(value)
    return out


def _histograms(log) -> dict[str, Any]:
    import numpy as np

    out = {}
    for stream in log.stream_names():
        if not stream.startswith("tokens/"):
            continue
        parts: dict[str, list] = {column: [] for column in TOKEN_VALUES}
        for chunk in log.stream(stream):
            for column, values in parts.items():
                values.extend(_flat(v) for v in chunk.columns.get(column, ()))
        for column, values in parts.items():
            if values:
                joined = np.concatenate(values).astype("float64")
                out[f"{stream}/{TOKEN_VALUES[column]}"] = joined[np.isfinite(joined)]
    return out


def _flat(value):
    import numpy as np

    return to_numpy(value).reshape(-1) if is_tensor(value) else np.asarray(value, dtype="float64").reshape(-1)


def _tables(log) -> dict[str, Table]:
    out = {}
    for stream in log.stream_names():
        if not stream.startswith("sequences/"):
            continue
        rows, columns, total = [], None, 0
        for chunk in log.stream(stream):
            columns = columns or [c for c in SEQUENCE_COLUMNS if c in chunk.columns]
            total += chunk.rows
            for k in range(min(chunk.rows, TEXT_ROWS - len(rows))):
                rows.append([_cell(chunk.columns[c][k]) for c in columns])
        out[stream] = Table(columns or [], rows, total)
    return out


def _cell(value):
    value = value.item() if is_tensor(value) and value.dim() == 0 else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value if value is None or isinstance(value, (str, int, float)) else str(value)
