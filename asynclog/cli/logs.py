"""``asynclog verify`` and ``asynclog cat``: check a log frame by frame, print it as JSON lines."""

from __future__ import annotations

import argparse
import math
import sys
import warnings

import msgspec

from asynclog import _format as fmt
from asynclog._follow import QUIET_S, Ended, Follower
from asynclog._format import Damage
from asynclog._reader import Log, check, missing
from asynclog._tables import plain
from asynclog.cli.exits import DAMAGED, INCOMPLETE, OK, USAGE, Failure
from asynclog.errors import CorruptLogError

_json = msgspec.json.Encoder()


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every frame of a log. Exit 0 when every frame is intact and the footer says the run closed
    normally; 1 when anything is damaged (each stretch is named on stderr); 2 when nothing is damaged but the
    run is incomplete (no footer, or a footer marked incomplete); 3 for a folder; 4 when the file does not
    exist. Damage wins over incomplete. A torn tail
    (a last frame a crash cut short or zero-filled, in a file without a trailer) is incomplete, not damage; so is
    a file a crash left empty or cut inside its preamble."""
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

    With --follow, records are printed as the writer appends them, like tail -f, until the footer (exit 0; a
    probe that died still gets one, marked incomplete, from its writer) or Ctrl-C (exit 130). A frame still
    being written is waited on. When no process on this machine holds the log open for writing and it has
    not grown for --quiet seconds, the run was abandoned: its torn tail is left out and the exit is 2. A run
    started on another machine is waited on until Ctrl-C (docs/FOLLOW.md).
    """
    if args.follow:
        return _cat_follow(args)
    try:
        log = Log(args.path)
    except CorruptLogError as exc:
        raise Failure(DAMAGED, f"{args.path} is not a readable asynclog log: {exc}") from exc
    if args.rows is not None:
        with log:
            return _cat_rows(log, args.rows)
    with log:
        return DAMAGED if _print_frames(log, log.walk()) else OK


def _cat_follow(args: argparse.Namespace) -> int:
    """``cat --follow``: print frames as they are appended (_follow.py); exit 2 when the log was abandoned."""
    if args.rows is not None:
        raise Failure(USAGE, "--rows and --follow do not go together: follow the records, then cat --rows")
    try:
        follower = Follower(args.path, quiet_s=args.quiet)
    except CorruptLogError as exc:
        raise Failure(DAMAGED, f"{args.path} is not a readable asynclog log: {exc}") from exc
    with follower:
        skipped = _print_frames(follower.log, follower, flush=True) if follower.log is not None else 0
    if follower.ended is Ended.ABANDONED:
        print(f"asynclog cat: {args.path}: {ABANDONED}", file=sys.stderr)
        return DAMAGED if skipped else INCOMPLETE
    return DAMAGED if skipped else OK


ABANDONED = "no footer, and no process here is writing it: the run was not closed (its writer is gone)"


def _print_frames(log: Log, items, flush: bool = False) -> int:
    """Print each frame of ``items`` (``Log.walk``'s) as JSON lines; name each damaged stretch on stderr and
    return how many there were. A torn tail is left out: it is where an unclosed log ends."""
    out, skipped = sys.stdout.buffer, 0
    for item in items:
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
        if flush:
            out.flush()
    return skipped


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


def register(subparsers) -> None:
    """Add ``verify`` and ``cat`` to the ``asynclog`` console script's subcommands."""
    p = subparsers.add_parser("verify", help="check every frame of a log (exit 0 OK, 1 damaged, 2 incomplete)",
                       description=cmd_verify.__doc__)
    p.add_argument("path", help="the .alog file to check")
    p.set_defaults(func=cmd_verify)
    p = subparsers.add_parser("cat", help="print every record as a JSON line (pipe into jq); skips damage, exit 1 if any",
                       description=cmd_cat.__doc__)
    p.add_argument("path", help="the .alog file to print")
    p.add_argument("--rows", default=None, metavar="STREAM",
                   help="print the rows of one stream instead (e.g. sequences/E_batch), one JSON object per line")
    follow_options(p)
    p.set_defaults(func=cmd_cat)


def follow_options(parser) -> None:
    """Add ``--follow`` and ``--quiet`` to a command that reads one log."""
    parser.add_argument("--follow", "-f", action="store_true",
                        help="keep printing as the writer appends, like tail -f, until the footer or Ctrl-C")
    parser.add_argument("--quiet", type=float, default=QUIET_S, metavar="SECONDS",
                        help=f"with --follow: end when no process here writes the log and it has not grown for "
                             f"SECONDS (default {QUIET_S:g})")
