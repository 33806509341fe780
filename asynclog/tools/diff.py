"""``asynclog diff RUN_A RUN_B``: what differs between two runs, their configs and their results side by side.

A run is read as ``analysis.read_run`` reads it (its summary sidecar, header frame and footer; a run folder of
ranks through rank 0's), and compared in these sections, each flattened to dotted keys
(``config.batch_config.G``; a list is one value):

    config             the probe's config: the header's ``probe_config``, else the ``_config.yaml`` sidecar
    run                the run's metadata (checkpoint, versions, git commit, environment), level and status
    core_results       the summary's core results
    ground_truth       the summary's ground truth and importance-sampling diagnostics
    timing             the summary's timing (seconds per phase)
    batch_statistics   the summary's batch statistics (in a run folder of ranks: rank 0's own)

Some values differ between any two runs: when and where a run ran, and how long it took (``VOLATILE``). Their
values are left out unless ``everything`` is set (``--all``); a key only one run has is a difference all the
same (a phase timed in one run only).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from asynclog import _format as fmt
from asynclog import _ondisk as ondisk
from asynclog._ondisk import SUMMARY_SUFFIX
from asynclog.errors import ConfigError
from asynclog.tools.analysis import read_run

__all__ = ["SECTIONS", "VOLATILE", "ABSENT", "Difference", "RunDiff", "run_values", "compare", "diff_runs"]

SECTIONS = ("config", "run", "core_results", "ground_truth", "timing", "batch_statistics")
# Keys whose values differ between any two runs, and the keys below them: when, where, how long.
VOLATILE = ("run.timestamp", "run.local_time", "run.log_path", "run.summary_path", "run.config_path",
            "run.environment.hostname", "timing")
_SUMMARY_RUN_KEYS = ("level", "rank", "world_size", "log_path", "summary_path", "config_path")


class _Absent:
    """The value of a key a run does not have."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()


class Difference(NamedTuple):
    """One dotted key whose value differs; ``ABSENT`` on the side that lacks it."""

    key: str
    a: Any
    b: Any


class RunDiff(NamedTuple):
    """Two runs compared: the differences shown, the keys left out (values that differ on every run), and what
    could not be read (each a line naming the run)."""

    a: str
    b: str
    differences: list[Difference]
    left_out: list[str]
    notes: list[str]

    @property
    def equal(self) -> bool:
        return not self.differences


def run_values(path: str) -> tuple[dict, list[str]]:
    """The run at ``path`` (a ``.alog`` file, its ``_summary.json``, or a run folder of ranks) as ``{section:
    mapping}`` for the ``SECTIONS`` it has, and notes on what could not be read."""
    if path.endswith(SUMMARY_SUFFIX):
        path = path.removesuffix(SUMMARY_SUFFIX) + fmt.SUFFIX
    facts = read_run(path)
    notes = [f"{path}: {problem}" for problem in facts.problems]
    if facts.status == "damaged":
        notes.append(f"{path}: damaged ({facts.reason}); compared as far as it could be read")
    summary = facts.summary or {}
    run = dict(facts.metadata)
    run.update({key: summary[key] for key in _SUMMARY_RUN_KEYS if key in summary})
    if facts.header or facts.summary:
        run["status"] = facts.status
    values = {"config": _config(path, facts.header, notes), "run": run}
    values.update({name: summary.get(name) for name in SECTIONS[2:]})
    return {name: value for name, value in values.items() if isinstance(value, dict) and value}, notes


def _config(path: str, header: dict, notes: list[str]) -> dict | None:
    """The probe's config as the header frame holds it, else as its sidecar does (read by the bounded loader)."""
    metadata = header.get("metadata")
    config = metadata.get("probe_config") if isinstance(metadata, dict) else None
    if isinstance(config, dict):
        return config
    try:
        return ondisk.read_config(path)
    except ConfigError as exc:
        notes.append(f"{path}: its config is not compared: {exc}")
        return None


def compare(a: dict, b: dict, everything: bool = False) -> tuple[list[Difference], list[str]]:
    """The differing leaves of two nested mappings, by dotted key (A's keys in order, then B's own); and the keys
    left out because their values differ on every run (``VOLATILE``; none when ``everything``)."""
    left, right = _leaves(a), _leaves(b)
    differences, left_out = [], []
    for key in [*left, *(k for k in right if k not in left)]:
        x, y = left.get(key, ABSENT), right.get(key, ABSENT)
        if _same(x, y):
            continue
        if not everything and x is not ABSENT and y is not ABSENT and volatile(key):
            left_out.append(key)
        else:
            differences.append(Difference(key, x, y))
    return differences, left_out


def diff_runs(a: str, b: str, everything: bool = False) -> RunDiff:
    """Compare the runs at ``a`` and ``b`` (see the module docstring). ValueError for a file that holds none of
    the sections (not a run asynclog wrote, or one too damaged to read)."""
    (values_a, notes_a), (values_b, notes_b) = run_values(a), run_values(b)
    for path, values in ((a, values_a), (b, values_b)):
        if not values:
            raise ValueError(f"{path}: no config, metadata or summary to compare; is it a run asynclog wrote?")
    differences, left_out = compare(values_a, values_b, everything)
    return RunDiff(a, b, differences, left_out, notes_a + notes_b)


def _leaves(tree: dict) -> dict[str, Any]:
    """Dotted key -> value of every leaf (anything but a non-empty mapping); no recursion, however deep."""
    leaves, todo = {}, [("", tree)]
    while todo:
        prefix, value = todo.pop()
        if isinstance(value, dict) and value:
            todo += [(f"{prefix}.{key}" if prefix else str(key), child) for key, child in reversed(value.items())]
        else:
            leaves[prefix] = value
    return leaves


def _same(x, y) -> bool:
    """Equal, as a reader means it: true is not 1; NaN is NaN."""
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return isinstance(x, bool) == isinstance(y, bool) and x == y


def volatile(key: str, under: tuple[str, ...] = VOLATILE) -> bool:
    """Whether ``key`` is one of ``under`` or below one of them."""
    return any(key == v or key.startswith(v + ".") for v in under)
