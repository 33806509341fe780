"""``asynclog demo`` (the toy probe, logged as a probe would) and ``asynclog bench`` (the peer harness)."""

from __future__ import annotations

import argparse
import os

from asynclog.cli.exits import USAGE, Failure


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the toy entropy probe over one or more checkpoints and log it through DetailedLogger, as a probe would.
    Exit 0 when every run was logged; 3 for a bad or missing --config, an --out that is a file or a device that
    is not there; 5 when a log cannot be written."""
    from asynclog.probe.demo import check_device
    from asynclog.probe.demo import main as demo_main

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise Failure(USAGE, f"--out {args.out} is a file; give a folder (it is created if missing)")
    try:
        args.device = check_device(args.device)
    except ValueError as exc:
        raise Failure(USAGE, str(exc)) from None
    return demo_main(args)


def cmd_bench(args: argparse.Namespace) -> int:
    """Compare asynclog with the usual ways of logging on this machine, each peer in its own subprocess, and print
    the report. Exit 0; 3 for an unknown name in --only."""
    from asynclog.bench import main as bench_main

    return bench_main(args)


def register(subparsers) -> None:
    """Add ``demo`` and ``bench`` to the ``asynclog`` console script's subcommands."""
    p = subparsers.add_parser("demo", help="run the demo entropy probe and write a real log", description=cmd_demo.__doc__)
    p.add_argument("--level", default="debug", choices=["minimal", "standard", "detailed", "debug"],
                   help="what the run keeps (default: debug)")
    p.add_argument("--checkpoints", type=int, default=1, help="sweep over N perturbed copies of the model")
    p.add_argument("--out", default="logs", help="output folder (default: logs)")
    p.add_argument("--config", default=None, help="YAML with a detailed_logging section (then --level is ignored)")
    p.add_argument("--size", default="small", choices=["tiny", "small", "medium"],
                   help="model and batch size (default: small; tiny runs in seconds)")
    p.add_argument("--no-logging", action="store_true", help="run the probe with logging disabled")
    p.add_argument("--device", default="cpu", help="where the model runs: cpu (default), cuda, cuda:1, ...")
    p.set_defaults(func=cmd_demo)
    p = subparsers.add_parser("bench", help="compare asynclog with the usual alternatives on this machine",
                       description=cmd_bench.__doc__)
    p.add_argument("--full", action="store_true", help="run the whole set (minutes), not the short one")
    p.add_argument("--only", default=None, help="comma-separated workloads and peers to run (asynclog always runs)")
    p.set_defaults(func=cmd_bench)
