"""The ``asynclog`` console script: argparse and exit statuses over the library's tools.

Each command lives in a module of this package, a thin layer over a library function (``asynclog.tools``,
the reader, the probe's demo); no library module imports this package. Adding a command: list its module in
``COMMAND_MODULES``; the module defines ``register(subparsers)``, which
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
import sys
import traceback

from asynclog import __version__
from asynclog.cli.exits import (CANNOT_ACCESS, DAMAGED, EXIT_STATUSES, INCOMPLETE, INTERRUPTED, NOT_FOUND, OK, USAGE,
                                Failure)
from asynclog.errors import AsyncLogError, ConfigError, CorruptLogError, WriterError

__all__ = ["main", "build_parser", "explain", "COMMAND_MODULES", "Failure", "EXIT_STATUSES", "OK", "DAMAGED",
           "INCOMPLETE", "USAGE", "NOT_FOUND", "CANNOT_ACCESS", "INTERRUPTED"]

# Modules that add subcommands through register(subparsers), in the order their commands are listed.
COMMAND_MODULES = ("asynclog.cli.logs", "asynclog.cli.demo", "asynclog.cli.runs", "asynclog.cli.diff",
                   "asynclog.cli.export", "asynclog.cli.query", "asynclog.cli.plot", "asynclog.cli.imports",
                   "asynclog.cli.report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asynclog", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read, check and demonstrate asynclog logs (.alog files).",
        epilog="exit status:\n" + "\n".join(f"  {code:<3} {what}" for code, what in EXIT_STATUSES.items()))
    parser.add_argument("--version", action="version", version=f"asynclog {__version__}",
                        help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="show the full traceback when something fails")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of:")
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
    (ConfigError, USAGE, "bad config: {0} (docs/CONFIG.md lists the keys)"),
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
