"""The few exceptions a user of asynclog would catch."""

__all__ = [
    "AsyncLogError",
    "ConfigError",
    "ClosedError",
    "LogInputError",
    "QueueFullError",
    "WriterError",
    "CorruptLogError",
    "ExportError",
    "PlotError",
]


class AsyncLogError(Exception):
    """Base of every error asynclog raises on purpose."""


class ConfigError(AsyncLogError, ValueError):
    """A configuration key is unknown or has the wrong type; the message names the key and the file."""


class ClosedError(AsyncLogError, RuntimeError):
    """A call on a run or stream that is already closed."""


class LogInputError(AsyncLogError, TypeError):
    """Data the caller passed cannot be logged (unserializable value, non-string key, sparse tensor, ...).

    Raised at the call site; nothing logged before is affected.
    """


class QueueFullError(AsyncLogError):
    """The hand-over queue or staging pool is full and the policy is ``error``."""


class WriterError(AsyncLogError, RuntimeError):
    """The writer process failed or died, or could not write a run's file.

    ``exitcode`` is the writer's exit status when it died; ``errno`` the OS error number when a write failed
    (``errno.ENOSPC`` for a full disk). The message names the file and the cause.
    """

    def __init__(self, message: str, exitcode: int | None = None, errno: int | None = None):
        super().__init__(message)
        self.exitcode = exitcode
        self.errno = errno
        self.reported = False  # raised to a caller once already: a later close() does not raise it again


class CorruptLogError(AsyncLogError):
    """A log file fails a checksum or is cut inside a frame; ``offset`` is where the damage starts."""

    def __init__(self, message: str, offset: int):
        super().__init__(f"{message} at offset {offset}")
        self.offset = offset


class ExportError(AsyncLogError, ValueError):
    """What was asked cannot be exported (a format that does not hold it, a stream that is not there)."""


class PlotError(AsyncLogError, ValueError):
    """Nothing to plot where the user pointed."""
