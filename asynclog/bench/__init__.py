"""``asynclog bench``: asynclog against what a user would pick instead, measured side by side in one run.

Each peer (``peers/``, one small adapter each) runs each workload (``workloads``) in its own subprocess,
driven through its own documented API; the runner (``_runner``) samples helper processes from outside and
the report (``_report``) prints one table per workload with asynclog's ratio to each peer, then the goals.
Peers whose package is not installed are reported missing: ``pip install asynclog[bench]`` brings them.

    asynclog bench                 # the short set, under a minute
    asynclog bench --full          # the whole set (minutes)
    asynclog bench --only events,tensors
"""

from __future__ import annotations

import argparse
import sys

from ._report import goals, report, table
from ._runner import Cell, plan, run
from .peers import PEERS
from .workloads import WORKLOADS

__all__ = ["main", "run", "plan", "report", "table", "goals", "Cell", "PEERS", "WORKLOADS"]


def main(args: argparse.Namespace) -> int:
    """Run the short set (or ``args.full``), limited to ``args.only``; print the report. Exit 1 on a bad name."""
    scale = "full" if args.full else "short"
    workloads = None
    if args.only:
        workloads = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in workloads if w not in WORKLOADS]
        if unknown:
            print(f"asynclog bench: unknown workload {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}",
                  file=sys.stderr)
            return 2
    command = " ".join(["asynclog bench", *(["--full"] if args.full else []),
                        *([f"--only {args.only}"] if args.only else [])])
    command = getattr(args, "command_line", None) or command

    def progress(cell: Cell) -> None:
        took = cell.figures.get("wall_s")
        detail = f" ({took:.1f} s)" if took is not None else (f": {cell.note}" if cell.note else "")
        print(f"  {cell.workload:8} {cell.name:22} {cell.status}{detail}", file=sys.stderr, flush=True)

    print(f"asynclog bench: {scale} set, each peer in its own subprocess, one at a time", file=sys.stderr)
    cells = run(scale, workload_keys=workloads, progress=progress)
    text = report(cells, scale, command)
    print(text)
    markdown = getattr(args, "markdown", None)
    if markdown:
        with open(markdown, "w", encoding="utf-8") as f:
            f.write(text)
    return 0
