"""``asynclog bench``: asynclog against what a user would pick instead, measured side by side in one run.

Each peer (``peers/``, one small adapter each) runs each workload (``workloads``) in its own subprocess,
driven through its own documented API; the runner (``_runner``) samples helper processes from outside and
the report (``_report``) prints one table per workload with asynclog's ratio to each peer, then the goals.
Peers whose package is not installed are reported missing: ``pip install asynclog[bench]`` brings them.

    asynclog bench                             # the short set, under a minute
    asynclog bench --full                      # the whole set (minutes)
    asynclog bench --only events,tensors       # two workloads, every peer
    asynclog bench --full --only tensors,sync,torch_save   # one workload, two peers (and asynclog)

``--only`` takes workload and peer names alike (no name is both): the workloads named, or all, for the
peers named, or all; asynclog, the reference every ratio is taken against, always runs. The report's first
line is the command that reproduces it.
"""

from __future__ import annotations

import argparse
import sys

from asynclog.bench._child import fsync_tree, measure
from asynclog.bench._report import goals, report, table
from asynclog.bench._runner import Cell, plan, run
from asynclog.bench.peers import PEERS, load
from asynclog.bench.workloads import TENSOR_SIZES, WORKLOADS, event_fields, snapshots, token_row

# The harness's public entry points; benchmarks/ uses these and nothing else of it.
__all__ = ["main", "run", "plan", "report", "table", "goals", "Cell", "PEERS", "WORKLOADS", "selection",
           "command_line", "load", "measure", "fsync_tree", "TENSOR_SIZES", "event_fields", "snapshots", "token_row"]


def selection(only: str | None) -> tuple[list[str] | None, list[str] | None]:
    """The workloads and the peers ``--only`` names (None: all); peers in the table's order, asynclog first.

    Raises ValueError naming what is neither a workload nor a peer.
    """
    names = [n.strip() for n in (only or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS and n not in PEERS]
    if unknown:
        raise ValueError(f"unknown workload or peer {', '.join(unknown)}; workloads: {', '.join(WORKLOADS)}; "
                         f"peers: {', '.join(PEERS)}")
    workloads = [n for n in names if n in WORKLOADS] or None
    named = [n for n in names if n in PEERS]
    return workloads, ([k for k in PEERS if k == "asynclog" or k in named] if named else None)


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this report (a script wrapping ``main`` passes its own)."""
    return getattr(args, "command_line", None) or " ".join(
        ["asynclog bench", *(["--full"] if args.full else []), *([f"--only {args.only}"] if args.only else [])])


def main(args: argparse.Namespace) -> int:
    """Run the short set (or ``args.full``), limited to ``args.only``; print the report. Exit 3 on a bad name."""
    scale = "full" if args.full else "short"
    try:
        workloads, peer_keys = selection(args.only)
    except ValueError as exc:
        print(f"asynclog bench: {exc}", file=sys.stderr)
        return 3  # the CLI's USAGE
    command = command_line(args)

    def progress(cell: Cell) -> None:
        took = cell.figures.get("wall_s")
        detail = f" ({took:.1f} s)" if took is not None else (f": {cell.note}" if cell.note else "")
        print(f"  {cell.workload:8} {cell.name:22} {cell.status}{detail}", file=sys.stderr, flush=True)

    print(f"asynclog bench: {scale} set, each peer in its own subprocess, one at a time", file=sys.stderr)
    cells = run(scale, peer_keys=peer_keys, workload_keys=workloads, progress=progress)
    text = report(cells, scale, command)
    print(text)
    markdown = getattr(args, "markdown", None)
    if markdown:
        with open(markdown, "w", encoding="utf-8") as f:
            f.write(text)
    return 0
