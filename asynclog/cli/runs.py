"""``asynclog ls``, ``show`` and ``sweep``: the runs below a folder, as ``asynclog.tools.analysis`` reads them."""

from __future__ import annotations

import argparse
import csv
import io
import os
import stat
import sys
import time

import msgspec

from asynclog import _format as fmt
from asynclog._follow import Ended, Follower
from asynclog._format import FrameKind
from asynclog._ondisk import SUMMARY_SUFFIX, is_run_folder
from asynclog._reader import Log
from asynclog.cli.exits import DAMAGED, INCOMPLETE, NOT_FOUND, USAGE, Failure
from asynclog.cli.logs import ABANDONED, follow_options
from asynclog.tools import index
from asynclog.tools._table import human_size, render
from asynclog.tools.analysis import (COLUMNS, describe, logged_problems, printable, read_run, row, rows_below,
                                     sort_rows, warnings_for)

_json = msgspec.json.Encoder()


# --- the commands ----------------------------------------------------------------------------------------------
def _rows_or_complain(args: argparse.Namespace) -> list[dict] | None:
    """The rows ``ls`` and ``sweep`` print, every text printable (``printable``)."""
    if not os.path.isdir(args.directory):
        print(f"asynclog: {args.directory}: not a directory (give the folder that holds the runs)", file=sys.stderr)
        return None
    return [{k: printable(v) if isinstance(v, str) else v for k, v in r.items()}
            for r in rows_below(args.directory, not args.no_index)]


_LS = [("date", "date"), ("time", "time"), ("checkpoint", "checkpoint"), ("level", "level"),
       ("status", "status"), ("size", "size"), ("δH₁", "deltaH1"), ("δH_true", "deltaH_true"), ("ESS", "ESS"),
       ("path", "path"), ("why", "reason")]


def cmd_ls(args: argparse.Namespace) -> int:
    """List the runs below a folder, one line each. Exit 0; 4 when the folder does not exist."""
    rows = _rows_or_complain(args)
    if rows is None:
        return NOT_FOUND
    if args.json:
        sys.stdout.buffer.write(_json.encode(rows) + b"\n")
        return 0
    if not rows:
        print(f"no runs (.alog files) below {args.directory}")
        return 0
    table = [[human_size(r[k]) if k == "size" else r[k] for _, k in _LS] for r in rows]
    for line in table:
        line[-1] = line[-1] or ""  # no reason: the run is complete
    print(render([h for h, _ in _LS], table))
    return 0


_SWEEP = ["checkpoint", "date", "time", "level", "status", "deltaH1", "deltaH_true", "ESS", "w_max", "bars_dot",
          "learning_rate", "total_time", "logging_fraction", "dropped", "path"]


def cmd_sweep(args: argparse.Namespace) -> int:
    """One table across all runs below a folder: sortable; text, CSV or JSON. Exit 0; 3 bad --sort; 4 no folder."""
    key = args.sort
    if key not in COLUMNS:
        print(f"asynclog: cannot sort by {key!r}; use one of {', '.join(COLUMNS)}", file=sys.stderr)
        return USAGE
    rows = _rows_or_complain(args)
    if rows is None:
        return NOT_FOUND
    rows = sort_rows(rows, key, args.reverse)
    if args.csv:
        text = _csv(rows)
    elif args.json:
        text = _json.encode(rows).decode() + "\n"
    else:
        text = render(_SWEEP, [[r[k] for k in _SWEEP] for r in rows]) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def cmd_show(args: argparse.Namespace) -> int:
    """What a person wants to see first about one run. Exit 0; 1 when --json cannot print what its header or footer
    holds (not what asynclog writes); 3 for a folder of runs; 4 when there is no such run.

    With --follow, first a line per record as the writer appends it (like cat --follow: until the footer,
    Ctrl-C, or --quiet seconds after the log was abandoned, then exit 2; docs/FOLLOW.md), then the summary."""
    path = args.run.removesuffix(SUMMARY_SUFFIX) + fmt.SUFFIX if args.run.endswith(SUMMARY_SUFFIX) else args.run
    if os.path.isdir(path) and not is_run_folder(path):
        print(f"asynclog: {args.run}: is a folder (give one run's .alog file; `asynclog ls {args.run}` lists them)",
              file=sys.stderr)
        return USAGE
    if not os.path.exists(path) or not (os.path.isdir(path) or stat.S_ISREG(os.stat(path).st_mode)):
        print(f"asynclog: {args.run}: no such run (give a .alog file; `asynclog ls DIR` lists them)", file=sys.stderr)
        return NOT_FOUND
    abandoned = args.follow and _show_live(path, args.quiet) is Ended.ABANDONED
    if abandoned:
        print(f"asynclog show: {args.run}: {ABANDONED}", file=sys.stderr)
    facts = read_run(path)
    warnings = warnings_for(facts, args.min_ess, args.min_ess_fraction) + logged_problems(path)
    if args.json:
        report = {"path": path, "status": facts.status, "reason": facts.reason, "size": facts.size,
                  "warnings": warnings, "row": row(facts), "summary": facts.summary, "header": facts.header,
                  "footer": facts.footer}
        try:
            text = _json.encode(report)
        except (TypeError, msgspec.EncodeError) as exc:  # msgpack extension types, maps keyed by arrays
            raise Failure(DAMAGED, f"{path}: its header or footer holds what JSON cannot ({exc}); asynclog "
                                   "never writes that") from None
        sys.stdout.buffer.write(text + b"\n")
    else:
        print(describe(facts, warnings))
    return INCOMPLETE if abandoned else 0


def _show_live(path: str, quiet_s: float) -> Ended | None:
    """``show --follow``: a line per record as the writer appends it (_follow.py), until the run ends; then
    a blank line, and ``show`` describes the run."""
    if os.path.isdir(path):
        raise Failure(USAGE, f"{path}: --follow reads one .alog file; give one rank's file of this run folder")
    with Follower(path, quiet_s) as follower:
        for item in follower:
            for line in [] if isinstance(item, fmt.Damage) else live_lines(follower.log, *item):
                print(line, flush=True)
    print(flush=True)
    return follower.ended


# --- the parser --------------------------------------------------------------------------------------------------
def register(subparsers) -> None:
    """Add ``ls``, ``show`` and ``sweep`` to the ``asynclog`` console script's subcommands."""
    p = subparsers.add_parser("ls", help="list the runs below a folder, one line each (from summaries and footers)",
                              description=cmd_ls.__doc__)
    p.add_argument("directory", help="folder holding runs (searched recursively for .alog files)")
    p.add_argument("--json", action="store_true", help="print the rows as one JSON array")
    _index_option(p)
    p.set_defaults(func=cmd_ls)
    p = subparsers.add_parser("show", help="summary of one run: results, timing, diagnostics, warnings, cost",
                              description=cmd_show.__doc__)
    p.add_argument("run", help="the run's .alog file (or its _summary.json)")
    p.add_argument("--json", action="store_true", help="print everything as one JSON object")
    p.add_argument("--min-ess", type=float, default=None, metavar="N",
                   help="warn when ESS is below N (default: a fraction of the E batch, see --min-ess-fraction)")
    p.add_argument("--min-ess-fraction", type=float, default=0.1, metavar="F",
                   help="warn when ESS is below F times the E batch's sequence count (default 0.1)")
    follow_options(p)
    p.set_defaults(func=cmd_show)
    p = subparsers.add_parser("sweep", help="one table across all runs below a folder (sortable; text, CSV, JSON)",
                              description=cmd_sweep.__doc__)
    p.add_argument("directory", help="folder holding the runs of the sweep (searched recursively)")
    p.add_argument("--sort", default="path", metavar="KEY",
                   help=f"column to sort by (default: path), one of: {', '.join(COLUMNS)}")
    p.add_argument("--reverse", action="store_true", help="sort in descending order")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="print CSV with every column")
    out.add_argument("--json", action="store_true", help="print a JSON array of rows with every column")
    p.add_argument("-o", "--output", default=None, metavar="FILE", help="write to FILE instead of standard output")
    _index_option(p)
    p.set_defaults(func=cmd_sweep)


def _index_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-index", action="store_true",
                   help=f"read every run, and neither read nor write the {index.INDEX_NAME} file each folder keeps "
                        f"(also: {index.NO_INDEX_ENV}=1)")


# --- show --follow: one line per record ------------------------------------------------------------------------
# --- show --follow: one line a record ---------------------------------------------------------------------------
_LINE_CHARS = 160  # a live line is cut here: a record's whole data is what ``cat --follow`` prints


def live_lines(log: Log, header: fmt.FrameHeader, meta: dict) -> list[str]:
    """What ``show --follow`` prints for one frame: a line per record (its time, type, name and fields), a
    line per tensor piece or stream chunk; nothing for the header and footer frames (``show`` describes them)."""
    if header.kind == FrameKind.RECORDS:
        return [_cut(f"{_clock(r.get('time'))}  {r.get('type', '?')} {r.get('name', '')}  {_fields(r.get('data'))}")
                for r in log.records(header)]
    if header.kind == FrameKind.TENSOR:
        return [_cut(f"{'':12}  tensor {meta.get('name')}  {meta.get('dtype')} {meta.get('shape')}")]
    if header.kind == FrameKind.CHUNK:
        return [_cut(f"{'':12}  chunk {meta.get('stream')} #{meta.get('chunk')}  {meta.get('rows')} rows")]
    return []


def _clock(seconds) -> str:
    if not isinstance(seconds, (int, float)) or not 0 <= seconds < 1e11:
        return f"{'?':12}"
    return time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{int(seconds % 1 * 1000):03d}"


def _fields(data) -> str:
    if not isinstance(data, dict):
        return "" if data is None else repr(data)
    return " ".join(f"{k}={_value(v)}" for k, v in data.items())


def _value(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)


def _cut(line: str) -> str:
    return line if len(line) <= _LINE_CHARS else line[: _LINE_CHARS - 3] + "..."
