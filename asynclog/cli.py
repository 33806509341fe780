"""The ``asynclog`` console script: verify, cat, demo, bench."""

from __future__ import annotations

import argparse
import sys

import msgspec

from . import format as fmt
from .errors import CorruptLogError
from .format import Damage
from .reader import Log, check

_json = msgspec.json.Encoder()

# Exit statuses of `verify` and `cat`.
OK, DAMAGED, INCOMPLETE = 0, 1, 2


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every frame of a log. Exit 0 when every frame is intact and the footer says the run closed
    normally; 1 when anything is damaged (each stretch is named on stderr); 2 when nothing is damaged but the
    run is incomplete (no footer, or a footer marked incomplete). Damage wins over incomplete."""
    try:
        frames, damaged, incomplete = check(args.path)
    except OSError as exc:
        print(f"{args.path}: cannot read: {exc}", file=sys.stderr)
        return DAMAGED
    for d in damaged:
        print(f"{args.path}: damaged at offset {d.offset} ({d.size} bytes): {d.reason}", file=sys.stderr)
    if incomplete:
        print(f"{args.path}: {incomplete}", file=sys.stderr)
    if damaged:
        return DAMAGED
    if incomplete:
        return INCOMPLETE
    print(f"{args.path}: OK, {frames} frames")
    return OK


def cmd_cat(args: argparse.Namespace) -> int:
    """Print every record as one JSON line; tensors and chunks appear as their metadata.

    Damaged stretches are skipped, each named on stderr (offset, bytes, why), and printing goes on with the
    next intact frame. Exit 0 when every frame was printed, 1 when something was skipped or the file is
    not an asynclog log.
    """
    out = sys.stdout.buffer
    try:
        log = Log(args.path)
    except (CorruptLogError, OSError) as exc:
        print(f"asynclog: {args.path}: {exc}", file=sys.stderr)
        return DAMAGED
    skipped = 0
    with log:
        for item in log.walk():
            try:
                if isinstance(item, Damage):
                    raise CorruptLogError(item.reason, item.offset)
                out.write(_json_lines(log, *item))
            except CorruptLogError as exc:
                size = item.size if isinstance(item, Damage) else item[0].size
                print(f"asynclog: skipped {size} bytes at offset {exc.offset}: {exc}", file=sys.stderr)
                skipped += 1
    return DAMAGED if skipped else OK


def _json_lines(log: Log, header: fmt.FrameHeader, meta: dict) -> bytes:
    lines = _lines(log, header, meta)
    try:
        return b"".join(_json.encode(line) + b"\n" for line in lines)
    except (TypeError, msgspec.EncodeError) as exc:  # e.g. a map keyed by an array: msgpack has it, JSON not
        raise CorruptLogError(f"frame cannot be printed as JSON ({exc})", header.offset) from None


def _lines(log: Log, header: fmt.FrameHeader, meta: dict) -> list[dict]:
    kind = header.kind
    if kind == fmt.FrameKind.RECORDS:
        return log.records(header)
    if kind == fmt.FrameKind.HEADER:
        return [{"type": "header", **meta}]
    if kind in (fmt.FrameKind.TENSOR, fmt.FrameKind.CHUNK):
        name = "tensor" if kind == fmt.FrameKind.TENSOR else "chunk"
        return [{"type": name, **meta, "stored_bytes": header.body_len, "filter": header.filter.name.lower()}]
    if kind == fmt.FrameKind.FOOTER:
        return [{"type": "footer", **{k: v for k, v in meta.items() if k != "index"}}]
    return []


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asynclog", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("verify", help="check every frame of a log (exit 0 OK, 1 damaged, 2 incomplete)")
    p.add_argument("path")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("cat", help="print every record as a JSON line (pipe into jq); skips damage, exit 1 if any")
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
