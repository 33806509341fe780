"""``asynclog import``: runs of the earlier JSON logger brought into asynclog's layout."""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

from asynclog.cli.exits import DAMAGED, NOT_FOUND, OK, USAGE, Failure
from asynclog.tools.jsonlogs import MAX_SIZE_MIB, JsonRunError, find_runs, import_run


def cmd_import(args: argparse.Namespace) -> int:
    """Import runs of the JSON logger (entropy_probe_*.json.gz or .json, with their _summary.json and
    _config.yaml) into DIR, laid out as DetailedLogger lays out its runs, so that ls, sweep and show list old
    and new runs together. Every value is kept; the sources are only read; a run imported before is named
    and skipped. Each main file is read whole (a few times its uncompressed size in memory, one run at a
    time). Exit 0 when every run was imported or was there already; 1 when a file was skipped (each named
    on stderr, with why); 4 when a SOURCE does not exist (nothing is imported then)."""
    for source in args.sources:
        if not os.path.exists(source):
            raise Failure(NOT_FOUND, f"{source}: no such file or folder; check the path")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise Failure(USAGE, f"--out {args.out} is a file; give a folder (it is created if missing)")
    if args.max_size < 1:
        raise Failure(USAGE, f"--max-size must be at least 1 (MiB), not {args.max_size}")
    found = list(dict.fromkeys(path for source in args.sources for path in find_runs(source)))
    if not found:
        print(f"no runs of the JSON logger (entropy_probe_*.json.gz or .json) in {' '.join(args.sources)}")
        return OK
    counts = Counter(_import_one(path, args.out, args.max_size << 20) for path in found)
    print(f"{counts['imported']} imported, {counts['already']} already imported, {counts['skipped']} skipped")
    return DAMAGED if counts["skipped"] else OK


def _import_one(path: str, out: str, max_size: int) -> str:
    try:
        done = import_run(path, out, max_size)
    except JsonRunError as exc:
        print(f"asynclog import: {path}: {exc}; skipped", file=sys.stderr)
        return "skipped"
    for note in done.notes:
        print(f"asynclog import: {path}: {note}", file=sys.stderr)
    if not done.new:
        print(f"already imported: {path} is {done.dest}")
        return "already"
    print(f"imported {path} -> {done.dest}")
    return "imported"


def register(subparsers) -> None:
    """Add ``import`` to the ``asynclog`` console script's subcommands."""
    p = subparsers.add_parser("import", help="bring runs of the JSON logger (.json.gz) into asynclog's layout",
                              description=cmd_import.__doc__)
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="a run's main file (.json.gz or .json), or a folder searched for entropy_probe_*.json[.gz]")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder: runs go to DIR/<YYYY-MM-DD>/ (created if missing)")
    p.add_argument("--max-size", type=int, default=MAX_SIZE_MIB, metavar="MIB",
                   help=f"refuse a main file larger than this once uncompressed (default {MAX_SIZE_MIB} MiB)")
    p.set_defaults(func=cmd_import)
