"""asynclog: a log writer for GPU research code that never makes the probe wait.

The probe's process encodes records and copies tensor snapshots into shared memory; a separate writer
process compresses and writes them as checksummed frames. See README.md and docs/FORMAT.md.
"""

__version__ = "0.1.0"

# Everything is loaded on first use (PEP 562): the writer process runs ``python -m asynclog._writer``, which
# executes this file first, and must not pay for yaml, torch or the probe's machinery.
_HOMES = {
    "start": "_session", "shutdown": "_session", "Config": "config", "LEVELS": "config",
    "Run": "_run", "Stream": "_stream",
    "open": "_shards", "verify": "_reader", "Log": "_reader", "Chunk": "_reader", "DetailedLogger": "probe",
    "AsyncLogError": "errors", "ClosedError": "errors", "ConfigError": "errors", "CorruptLogError": "errors",
    "LogInputError": "errors", "QueueFullError": "errors", "WriterError": "errors", "ExportError": "errors",
    "PlotError": "errors", "NameTakenWarning": "_session",
    "ShardedLog": "_shards", "LoggingHandler": "_bridge",
    "scan": "tools.analysis",
}
_RENAMED = {"open": "open_log"}

__all__ = [
    "__version__",
    "start",
    "Run",
    "Stream",
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
    "ExportError",
    "PlotError",
    "NameTakenWarning",
    "ShardedLog",
    "LoggingHandler",
    "scan",
]


def __getattr__(name: str):
    module = _HOMES.get(name)
    if module is None:
        raise AttributeError(f"module 'asynclog' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)
