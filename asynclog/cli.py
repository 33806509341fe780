"""The ``asynclog`` console script: verify, cat, demo, bench, and the commands other modules register.

Adding a command: list its module in ``COMMAND_MODULES``; the module defines ``register(subparsers)``, which
calls ``subparsers.add_parser(name, help=...)``, adds arguments (each with ``help=``) and sets
``func=<callable taking the parsed args and returning an exit status>`` with ``set_defaults``. A listed
module that is not installed is skipped; any other error while importing it is raised. A command reports a
mistake by raising ``Failure(status, "one line: what, which file, what to do")`` or by letting an OSError,
ConfigError or other AsyncLogError through: ``main`` prints it as one line (the traceback only with
``--debug``) and exits with the documented status (``EXIT_STATUSES``).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import traceback
import warnings

import msgspec

from . import __version__
from . import format as fmt
from .errors import AsyncLogError, ConfigError, CorruptLogError, WriterError
from .exits import (CANNOT_ACCESS, DAMAGED, EXIT_STATUSES, INCOMPLETE, INTERRUPTED, NOT_FOUND, OK, USAGE,  # noqa: F401
                    Failure)
from .format import Damage
from .reader import Log, check, missing
from .tables import plain

_json = msgspec.json.Encoder()

# Modules that add subcommands through register(subparsers), in the order their commands are listed.
COMMAND_MODULES = ("asynclog.analysis", "asynclog.diff", "asynclog.export", "asynclog.dataset", "asynclog.plots",
                   "asynclog.jsonlogs")

def cmd_verify(args: argparse.Namespace) -> int:
    """Check every frame of a log. Exit 0 when every frame is intact and the footer says the run closed
    normally; 1 when anything is damaged (each stretch is named on stderr); 2 when nothing is damaged but the
    run is incomplete (no footer, or a footer marked incomplete); 3 for a folder; 4 when the file does not
    exist. Damage wins over incomplete. A torn tail
    (a last frame a crash cut short or zero-filled, in a file without a trailer) is incomplete, not damage."""
    frames, damaged, incomplete = check(args.path)
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

    JSON has no NaN or infinities: those floats are printed as the strings "NaN", "Infinity" and
    "-Infinity", so they stay apart from null (jq 'select(.data.x == "NaN")' finds them).
    Damaged stretches are skipped, each named on stderr (offset, bytes, why), and printing goes on with the
    next intact frame. Exit 0 when every frame was printed, 1 when something was skipped or the file is
    not an asynclog log, 3 for a folder or a stream the log lacks, 4 when the file does not exist. A torn
    tail ends the output as the end of any log that was not closed does. With --rows STREAM, the stream's
    rows instead, one JSON object per row (tensor cells as lists), one chunk in memory at a time.
    """
    out = sys.stdout.buffer
    try:
        log = Log(args.path)
    except CorruptLogError as exc:
        raise Failure(DAMAGED, f"{args.path} is not a readable asynclog log: {exc}") from exc
    if args.rows is not None:
        with log:
            return _cat_rows(log, args.rows)
    skipped = 0
    with log:
        for item in log.walk():
            if isinstance(item, Damage) and item.torn:
                continue
            try:
                if isinstance(item, Damage):
                    raise CorruptLogError(item.reason, item.offset)
                out.write(_json_lines(log, *item))
            except CorruptLogError as exc:
                size = item.size if isinstance(item, Damage) else item[0].size
                print(f"asynclog: skipped {size} bytes at offset {exc.offset}: {exc}", file=sys.stderr)
                skipped += 1
    return DAMAGED if skipped else OK


def _cat_rows(log: Log, name: str) -> int:
    """``cat --rows``: a damaged chunk is skipped, named on stderr, and exits 1, as a damaged frame does."""
    if name not in log.stream_names():
        raise Failure(USAGE, missing("stream", name, log.stream_names(), log.path))
    out = sys.stdout.buffer
    with warnings.catch_warnings(record=True) as skipped:
        warnings.simplefilter("always")
        for chunk in log.stream(name):
            out.write(b"".join(_json.encode(plain(row)) + b"\n" for row in chunk.iter_rows()))
    for warning in skipped:
        print(warning.message, file=sys.stderr)
    return DAMAGED if skipped else OK


def _json_lines(log: Log, header: fmt.FrameHeader, meta: dict) -> bytes:
    lines = _lines(log, header, meta)
    try:
        return b"".join(_json.encode(json_safe(line)) + b"\n" for line in lines)
    except (TypeError, msgspec.EncodeError) as exc:  # e.g. a map keyed by an array: msgpack has it, JSON not
        raise CorruptLogError(f"frame cannot be printed as JSON ({exc})", header.offset) from None
    except RecursionError:  # the reader decodes deeper than json_safe, two frames a level, can walk
        raise CorruptLogError("frame cannot be printed as JSON (a value nests too deeply)", header.offset) from None


_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def json_safe(value):
    """``value`` with every NaN and ±inf float replaced by "NaN", "Infinity" or "-Infinity" (JSON has no
    such numbers, and msgspec would print null, the same as None)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else _NON_FINITE.get(value, "NaN")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


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
    """Run the toy entropy probe over one or more checkpoints and log it through DetailedLogger, as a probe would.
    Exit 0 when every run was logged; 3 for a bad or missing --config, an --out that is a file or a device that
    is not there; 5 when a log cannot be written."""
    from .demo import check_device, main as demo_main

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
    from .bench import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asynclog", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read, check and demonstrate asynclog logs (.alog files).",
        epilog="exit status:\n" + "\n".join(f"  {code:<3} {what}" for code, what in EXIT_STATUSES.items()))
    parser.add_argument("--version", action="version", version=f"asynclog {__version__}",
                        help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="show the full traceback when something fails")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of:")
    p = sub.add_parser("verify", help="check every frame of a log (exit 0 OK, 1 damaged, 2 incomplete)",
                       description=cmd_verify.__doc__)
    p.add_argument("path", help="the .alog file to check")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("cat", help="print every record as a JSON line (pipe into jq); skips damage, exit 1 if any",
                       description=cmd_cat.__doc__)
    p.add_argument("path", help="the .alog file to print")
    p.add_argument("--rows", default=None, metavar="STREAM",
                   help="print the rows of one stream instead (e.g. sequences/E_batch), one JSON object per line")
    p.set_defaults(func=cmd_cat)
    p = sub.add_parser("demo", help="run the demo entropy probe and write a real log", description=cmd_demo.__doc__)
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
    p = sub.add_parser("bench", help="compare asynclog with the usual alternatives on this machine",
                       description=cmd_bench.__doc__)
    p.add_argument("--full", action="store_true", help="run the whole set (minutes), not the short one")
    p.add_argument("--only", default=None, help="comma-separated workloads and peers to run (asynclog always runs)")
    p.set_defaults(func=cmd_bench)
    for name in COMMAND_MODULES:
        _command_module(name).register(sub)
    _accept_debug_after_the_command(sub)
    return parser


def _command_module(name: str):
    """The module, or an object whose register does nothing when the module itself is not installed."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:  # the module is there but something it imports is not: that is its bug
            raise
    return argparse.Namespace(register=lambda subparsers: None)


def _accept_debug_after_the_command(sub: argparse._SubParsersAction) -> None:
    """``asynclog cat x --debug`` as well as ``asynclog --debug cat x``; SUPPRESS keeps the first one's value."""
    for p in {id(p): p for p in sub.choices.values()}.values():
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback when something fails")


# The mistakes a user can fix: the first matching type gives the exit status and the line ({0} is the error).
_MISTAKES = (
    (FileNotFoundError, NOT_FOUND, "{0.filename}: no such file or folder; check the path"),
    (IsADirectoryError, USAGE, "{0.filename} is a folder; give one .alog file (ls {0.filename}/*/*.alog lists them)"),
    (NotADirectoryError, USAGE, "{0.filename}: a file is in the way of this folder; choose another path"),
    (OSError, CANNOT_ACCESS, "cannot access {0.filename}: {0.strerror}; check its permissions and free space"),
    (WriterError, CANNOT_ACCESS, "the writer failed: {0}"),
    (ConfigError, USAGE, "bad config: {0} (the keys are listed in asynclog/config.py and docs/PROBE.md)"),
    (CorruptLogError, DAMAGED, "damaged log: {0}"),
    (AsyncLogError, USAGE, "{0}"),
)


def explain(exc: BaseException) -> tuple[int, str] | None:
    """The exit status and one line for a mistake a user can fix; None for a bug (its traceback is shown)."""
    if isinstance(exc, Failure):
        return exc.status, str(exc)
    if isinstance(exc, OSError) and exc.filename is None:
        return CANNOT_ACCESS, f"{exc}; check permissions and free space"
    for kind, status, line in _MISTAKES:
        if isinstance(exc, kind):
            return status, line.format(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `asynclog cat x | head`
        return OK
    except KeyboardInterrupt:
        return INTERRUPTED
    except Exception as exc:
        failure = explain(exc)
        if failure is None:
            raise
        if args.debug:
            traceback.print_exc()
        print(f"asynclog {args.command}: {failure[1]}", file=sys.stderr)
        return failure[0]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Parsed arguments; a usage mistake exits USAGE (argparse's own 2 is verify's 'incomplete')."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code == 2:
            raise SystemExit(USAGE) from None
        raise


if __name__ == "__main__":
    sys.exit(main())
