"""``asynclog plot RUN|DIR -o FOLDER``: the PNGs of ``asynclog.tools.plots``."""

from __future__ import annotations

import argparse

from asynclog.errors import PlotError
from asynclog.tools.plots import plot


def cmd_plot(args: argparse.Namespace) -> int:
    """Plot one run or a sweep. Exit 0 when PNGs were written (their paths on stdout); otherwise one line on stderr
    and 3 when there is nothing to plot (or matplotlib is missing), 4 when the target does not exist, 5 when a
    file cannot be read or written."""
    from asynclog.cli.export import command

    return command("plot", args.target, lambda: plot(args.target, args.out), (PlotError,))


def register(subparsers) -> None:
    p = subparsers.add_parser("plot", help="PNG plots of one run (a .alog) or of a sweep (a folder of runs)",
                              description=cmd_plot.__doc__)
    p.add_argument("target", help="a run's .alog file or run folder of ranks, or a folder with runs below it")
    p.add_argument("-o", "--out", required=True, help="folder for the PNGs (created if missing)")
    p.set_defaults(func=cmd_plot)
