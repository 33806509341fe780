"""``asynclog report RUN|DIR -o FILE``: the self-contained HTML page of ``asynclog.tools.report``."""

from __future__ import annotations

import argparse
import sys

from asynclog.cli.exits import USAGE
from asynclog.cli.export import command
from asynclog.errors import ExportError
from asynclog.tools.report import MAX_SEQUENCES, write_report


def cmd_report(args: argparse.Namespace) -> int:
    """Write one self-contained HTML page of a run or a sweep. Exit 0 when it was written (its path on stdout);
    otherwise one line on stderr and 3 for a folder without runs or a bad --max-sequences, 4 when the target
    does not exist, 5 when a file cannot be read or written."""
    if args.max_sequences < 1:
        print(f"asynclog report: --max-sequences {args.max_sequences}: give 1 or more", file=sys.stderr)
        return USAGE
    return command("report", args.target, lambda: [write_report(args.target, args.output, args.max_sequences)],
                   (ExportError,))


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="one self-contained HTML page of a run (summary, sequences coloured "
                              "by entropy) or of a sweep (charts, sortable table)", description=cmd_report.__doc__)
    p.add_argument("target", help="a run's .alog file or run folder of ranks, or a folder with runs below it")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the HTML file to write")
    p.add_argument("--max-sequences", type=int, default=MAX_SEQUENCES, metavar="N",
                   help=f"keep at most N sequences a batch (default {MAX_SEQUENCES}); the page says which")
    p.set_defaults(func=cmd_report)
