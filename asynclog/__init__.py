"""asynclog: a log writer for GPU research code that never makes the probe wait.

The probe's process encodes records and copies tensor snapshots into shared memory; a separate writer
process compresses and writes them as checksummed frames. See README.md and docs/FORMAT.md.
"""

__version__ = "0.1.0"

from .config import LEVELS, Config  # noqa: E402
from .errors import (  # noqa: E402
    AsyncLogError,
    ClosedError,
    ConfigError,
    CorruptLogError,
    LogInputError,
    QueueFullError,
    WriterError,
)
from .reader import Chunk, Log, open_log as open, verify  # noqa: E402,A001
from .session import shutdown, start  # noqa: E402

__all__ = [
    "__version__",
    "start",
    "DetailedLogger",
    "open",
    "verify",
    "shutdown",
    "Config",
    "LEVELS",
    "Log",
    "Chunk",
    "AsyncLogError",
    "ClosedError",
    "ConfigError",
    "CorruptLogError",
    "LogInputError",
    "QueueFullError",
    "WriterError",
]


def __getattr__(name: str):
    # The probe layer imports torch; load it only when asked for.
    if name == "DetailedLogger":
        from .probe import DetailedLogger

        return DetailedLogger
    raise AttributeError(f"module 'asynclog' has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(__all__)
