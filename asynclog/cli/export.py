"""``asynclog export``: one run to Parquet, CSV, JSON lines or npz, or many runs into a dataset."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from asynclog.cli.exits import CANNOT_ACCESS, DAMAGED, INCOMPLETE, NOT_FOUND, USAGE
from asynclog.errors import AsyncLogError, ExportError
from asynclog.tools.export import FORMATS, export

DASHBOARDS = ("tensorboard", "wandb")  # written by asynclog/tools/tensorboard.py and asynclog/tools/wandb.py


def command(name: str, target: str, write: Callable[[], list[str]], mistakes: tuple = ()) -> int:
    """Run one subcommand that writes files: print each path written and return 0, or print one line on
    stderr (what, which file) and return the CLI's exit code for it (``asynclog --help`` lists them)."""

    try:
        paths = write()
    except (*mistakes, ImportError, KeyError) as exc:
        print(f"asynclog {name}: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return USAGE
    except (AsyncLogError, OSError) as exc:
        print(f"asynclog {name}: {target}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return NOT_FOUND if isinstance(exc, FileNotFoundError) else CANNOT_ACCESS
    for path in paths:
        print(path)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Exit 0 when every file was written (their paths on stdout); otherwise one line on stderr and the CLI's
    exit code (3 a mistake in the arguments, 4 no such run, 5 cannot read or write). A run that was not
    closed normally (for a run folder of ranks: any rank's shard) is exported as far as it goes, and then
    named on stderr with why: exit 2 when it is incomplete, 1 when a shard is missing or damaged.

    --to tensorboard and --to wandb take a run or a folder of runs (one dashboard run per folder of them) and
    write into -o FOLDER; the folders written are printed.

    With --dataset OUT: OUT, a hive-partitioned Parquet dataset, is made to hold the runs below RUN (a folder):
    new and changed runs are written, unchanged ones skipped, moved ones kept, and the runs it held from below
    RUN that RUN no longer holds removed (docs/DATASET.md). A run no table can hold is skipped, named on stderr
    with why, and the others are exported: exit 1 then."""
    if args.to in DASHBOARDS:
        return _to_dashboard(args)
    if args.dataset is None:
        done = command("export", args.run, lambda: export(args.run, args.to, args.what, args.out), (ExportError,))
        return done or _unfinished(args.run)
    if args.what or args.out:
        print("asynclog export: --dataset writes every table into its folder; --what and -o go with --to",
              file=sys.stderr)

        return USAGE
    from asynclog.tools.dataset import export_dataset

    done = []
    status = command("export", args.run, lambda: done.append(export_dataset(args.run, args.dataset)) or done[0],
                     (ExportError,))
    return status or (DAMAGED if done[0].skipped else 0)


def _to_dashboard(args: argparse.Namespace) -> int:
    """``--to tensorboard`` and ``--to wandb``: every table at once, into the folder -o names."""
    if args.what or not args.out:
        print(f"asynclog export: --to {args.to} writes each checkpoint's scalars, histograms and sequences: give "
              f"-o FOLDER, and no --what", file=sys.stderr)
        return USAGE
    if args.to == "tensorboard":
        from asynclog.tools.tensorboard import export_tensorboard as write
    else:
        from asynclog.tools.wandb import export_wandb as write
    return command("export", args.run, lambda: write(args.run, args.out), (ExportError,))


def _unfinished(path: str) -> int:
    """0 for a run closed normally; else one line on stderr naming what is not (each rank of a run folder
    that is not, as ``asynclog ls`` says it) and the exit status ``verify`` gives such a run."""
    from asynclog.tools.analysis import read_run

    facts = read_run(path)
    if facts.status == "complete":
        return 0
    print(f"asynclog export: {path}: {facts.status}, exported as far as it goes: {facts.reason}", file=sys.stderr)
    return DAMAGED if facts.status == "damaged" else INCOMPLETE


def register(subparsers) -> None:
    """Add ``export`` to the console script's subcommands."""
    p = subparsers.add_parser("export", help="write a run's events, streams or tensors as parquet, csv, jsonl or npz",
                              description=cmd_export.__doc__)
    p.add_argument("run", help="the run's .alog file or run folder of ranks (with --dataset: also a folder of runs)")
    into = p.add_mutually_exclusive_group(required=True)
    into.add_argument("--to", choices=FORMATS + DASHBOARDS,
                      help="output format; tensorboard and wandb take a run or a folder of runs (docs/DATASET.md)")
    into.add_argument("--dataset", metavar="OUT", default=None,
                      help="add every run below RUN to the Parquet dataset in folder OUT (query it with asynclog query)")
    p.add_argument("--what", default=None,
                   help="events (default), tensors (default for npz), a stream kind (sequences, tokens, importance) "
                        "or one stream's name (tokens/E_batch)")
    p.add_argument("-o", "--out", default=None,
                   help="output folder (default: the run's folder), or a file name when one table is written")
    p.set_defaults(func=cmd_export)
