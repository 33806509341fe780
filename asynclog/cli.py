"""The ``asynclog`` console script: verify, cat, demo, bench."""

from __future__ import annotations

import argparse
import sys

import msgspec

from . import format as fmt
from .filters import unfilter
from .reader import Log, verify

_json = msgspec.json.Encoder()


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 when every checksum holds and the footer is there, 1 on damage, 2 when only the footer is missing."""
    frames, problems = verify(args.path)
    if not problems:
        print(f"{args.path}: OK, {frames} frames")
        return 0
    for problem in problems:
        print(f"{args.path}: {problem}", file=sys.stderr)
    return 2 if problems[0].startswith("no footer") else 1


def cmd_cat(args: argparse.Namespace) -> int:
    """Print every record as one JSON line; tensors and chunks appear as their metadata."""
    out = sys.stdout.buffer
    with Log(args.path) as log:
        for header, meta in log.frames():
            for line in _lines(log, header, meta):
                out.write(_json.encode(line) + b"\n")
        if log.cut_at is not None:
            print(f"asynclog: log cut at offset {log.cut_at}: {log.cut_reason}", file=sys.stderr)
    return 0


def _lines(log: Log, header: fmt.FrameHeader, meta: dict):
    kind = header.kind
    if kind == fmt.FrameKind.RECORDS:
        _, stored = fmt.read_payload(log._file, header)
        yield from msgspec.msgpack.decode(unfilter(header.filter, header.itemsize, stored, header.raw_len))
    elif kind == fmt.FrameKind.HEADER:
        yield {"type": "header", **meta}
    elif kind == fmt.FrameKind.TENSOR:
        yield {"type": "tensor", **meta, "stored_bytes": header.body_len, "filter": header.filter.name.lower()}
    elif kind == fmt.FrameKind.CHUNK:
        yield {"type": "chunk", **meta, "stored_bytes": header.body_len, "filter": header.filter.name.lower()}
    elif kind == fmt.FrameKind.FOOTER:
        yield {"type": "footer", **{k: v for k, v in meta.items() if k != "index"}}


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asynclog", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("verify", help="check every checksum of a log")
    p.add_argument("path")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("cat", help="print every record as a JSON line (pipe into jq)")
    p.add_argument("path")
    p.set_defaults(func=cmd_cat)
    p = sub.add_parser("demo", help="run the demo entropy probe and write a real log")
    p.add_argument("--level", default="debug", choices=["minimal", "standard", "detailed", "debug"])
    p.add_argument("--checkpoints", type=int, default=1, help="sweep over N perturbed copies of the model")
    p.add_argument("--out", default="logs", help="output directory")
    p.add_argument("--config", default=None, help="YAML with a detailed_logging section")
    p.add_argument("--size", default="small", choices=["tiny", "small", "medium"])
    p.add_argument("--no-logging", action="store_true", help="run the probe with logging disabled")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("bench", help="compare asynclog with the usual alternatives on this machine")
    p.add_argument("--full", action="store_true", help="run the whole set (minutes), not the short one")
    p.add_argument("--only", default=None, help="comma-separated workloads to run")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `asynclog cat x | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
