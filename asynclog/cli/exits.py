"""Exit statuses of the ``asynclog`` commands, and ``Failure``, the one-line mistake a command reports.

Its own module so that the tools (ls, sweep, export, ...) can say how they end without importing the
console script, which imports them.
"""

from __future__ import annotations

__all__ = ["OK", "DAMAGED", "INCOMPLETE", "USAGE", "NOT_FOUND", "CANNOT_ACCESS", "INTERRUPTED", "EXIT_STATUSES",
           "Failure"]

# Exit statuses. cat and verify: 1 when anything is damaged; verify: 2 when intact but incomplete.
OK, DAMAGED, INCOMPLETE, USAGE, NOT_FOUND, CANNOT_ACCESS = 0, 1, 2, 3, 4, 5
INTERRUPTED = 130
EXIT_STATUSES = {
    OK: "success",
    DAMAGED: "a log is damaged, or is not an asynclog log (cat prints what is intact); import: a file was skipped; "
             "diff: the runs differ; export --dataset: a run no table can hold was skipped",
    INCOMPLETE: "verify, export: the run was not closed normally; every frame intact, or only a last one a crash tore",
    USAGE: "a usage mistake or bad input: a wrong argument, a folder given for a file, a bad config",
    NOT_FOUND: "a file or folder named on the command line does not exist",
    CANNOT_ACCESS: "a file cannot be read or written (permissions, a full disk, the writer failed)",
    INTERRUPTED: "interrupted (Ctrl-C)",
}


class Failure(Exception):
    """A mistake a command reports as one line on stderr and an exit status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
