"""``asynclog diff RUN_A RUN_B``: ``asynclog.tools.diff`` printed side by side, exit 0 when equal and 1 when not."""

from __future__ import annotations

import argparse
import os
import sys

import msgspec

from asynclog import _format as fmt
from asynclog._ondisk import SUMMARY_SUFFIX, is_run_folder
from asynclog.cli.exits import NOT_FOUND, USAGE, Failure
from asynclog.tools.diff import ABSENT, SECTIONS, VOLATILE, RunDiff, diff_runs, volatile

_CELL = 60  # characters of a value in the text table; --json gives every value whole


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
    from asynclog.tools._table import render

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
    return ", ".join(v for v in VOLATILE if any(volatile(key, (v,)) for key in keys))


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
