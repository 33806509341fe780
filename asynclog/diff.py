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

import argparse
import math
import os
import sys
from typing import Any, NamedTuple

import msgspec

from . import format as fmt
from .analysis import read_run
from .config import load_yaml  # the one YAML loader: bounded in size, aliases and depth
from .errors import ConfigError
from .exits import Failure, NOT_FOUND, USAGE
from .layout import CONFIG_SUFFIX, RANK_CONFIG, SUMMARY_SUFFIX
from .shards import is_run_folder

__all__ = ["SECTIONS", "VOLATILE", "ABSENT", "Difference", "RunDiff", "run_values", "compare", "diff_runs",
           "register"]

SECTIONS = ("config", "run", "core_results", "ground_truth", "timing", "batch_statistics")
# Keys whose values differ between any two runs, and the keys below them: when, where, how long.
VOLATILE = ("run.timestamp", "run.local_time", "run.log_path", "run.summary_path", "run.config_path",
            "run.environment.hostname", "timing")
_SUMMARY_RUN_KEYS = ("level", "rank", "world_size", "log_path", "summary_path", "config_path")
_CELL = 60  # characters of a value in the text table; --json gives every value whole


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
    sidecar = os.path.join(path, RANK_CONFIG) if os.path.isdir(path) else path.removesuffix(fmt.SUFFIX) + CONFIG_SUFFIX
    if not os.path.lexists(sidecar):
        return None
    try:
        return load_yaml(sidecar)
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
        if not everything and x is not ABSENT and y is not ABSENT and _volatile(key):
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


def _volatile(key: str, under: tuple[str, ...] = VOLATILE) -> bool:
    """Whether ``key`` is one of ``under`` or below one of them."""
    return any(key == v or key.startswith(v + ".") for v in under)


# --- the console script ---------------------------------------------------------------------------------
def cmd_diff(args: argparse.Namespace) -> int:
    """Print what differs between two runs: each differing key of their configs, metadata, core results, ground
    truth, timing and batch statistics, as a dotted key with run A's value and run B's (--json: one JSON
    object). Values that differ on every run (when and where it ran, how long each phase took) are left out
    unless --all is given; a key only one run has is always shown. Exit 0 when the runs are the same; 1 when
    they differ; 3 for a folder of runs or a file that holds no run to compare; 4 when a run does not exist."""

    for path in (args.run_a, args.run_b):
        log = path.removesuffix(SUMMARY_SUFFIX) + fmt.SUFFIX if path.endswith(SUMMARY_SUFFIX) else path
        if not os.path.lexists(log):
            raise Failure(NOT_FOUND, f"{path}: no such run (give a .alog file or a run folder; `asynclog ls DIR` "
                                     "lists them)")
        if os.path.isdir(log) and not is_run_folder(log):
            raise Failure(USAGE, f"{path} is a folder of runs; give one run (`asynclog ls {path}` lists them)")
    try:
        found = diff_runs(args.run_a, args.run_b, args.everything)
    except ValueError as exc:
        raise Failure(USAGE, str(exc)) from None
    for note in found.notes:
        print(f"asynclog diff: {note}", file=sys.stderr)
    print(_as_json(found) if args.json else _as_text(found))
    return 0 if found.equal else 1


def _as_text(found: RunDiff) -> str:
    from ._table import render

    lines = [f"--- A: {found.a}", f"+++ B: {found.b}"]
    if found.differences:
        rows = [[d.key, _cell(d.a), _cell(d.b)] for d in found.differences]
        lines += ["", render(["key", "A", "B"], rows), ""]
        lines.append(f"{len(found.differences)} key(s) differ")
    else:
        lines.append(f"the same {', '.join(SECTIONS)}")
    if found.left_out:
        lines[-1] += (f"; left out: {len(found.left_out)} key(s) whose values differ on every run "
                      f"({_summarise(found.left_out)}); --all shows them")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is ABSENT:
        return "(absent)"
    text = repr(value) if isinstance(value, float) else msgspec.json.encode(value).decode()
    return text if len(text) <= _CELL else text[: _CELL - 1] + "…"


def _summarise(keys: list[str]) -> str:
    """The left-out keys as the ``VOLATILE`` entries they fall under."""
    return ", ".join(v for v in VOLATILE if any(_volatile(key, (v,)) for key in keys))


def _as_json(found: RunDiff) -> str:
    differences = [{"key": d.key, **({} if d.a is ABSENT else {"a": d.a}), **({} if d.b is ABSENT else {"b": d.b})}
                   for d in found.differences]
    return msgspec.json.encode({"a": found.a, "b": found.b, "equal": found.equal, "differences": differences,
                                "left_out": found.left_out, "notes": found.notes}).decode()


def register(subparsers) -> None:
    """Add ``diff`` to the console script's subcommands."""
    p = subparsers.add_parser("diff", help="what differs between two runs: config and results side by side",
                              description=cmd_diff.__doc__)
    p.add_argument("run_a", metavar="RUN_A", help="a run: its .alog file, its _summary.json, or a run folder of ranks")
    p.add_argument("run_b", metavar="RUN_B", help="the run to compare it with")
    p.add_argument("--all", dest="everything", action="store_true",
                   help=f"also compare the values that differ on every run ({', '.join(VOLATILE)})")
    p.add_argument("--json", action="store_true", help="print one JSON object: equal, differences (key, a, b; a "
                                                       "side without the key has no a or b), left_out, notes")
    p.set_defaults(func=cmd_diff)
