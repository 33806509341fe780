"""The process-wide writer: ``start`` reuses one channel (one writer process, one staging pool) for run after run.

A sweep that opens and closes hundreds of runs spawns the writer once. A run whose config asks for a
different pool size, queue depth or flush interval gets a channel of its own. At interpreter exit (also
after Ctrl-C) every open run is closed and every writer is shut down; in a forked child the parent's runs
and writers are disowned, never closed twice.
"""

from __future__ import annotations

import atexit
import itertools
import os
import socket
import threading
import time
from typing import Any

from . import __version__
from .channel import Channel, Op
from .config import Config, level_rank
from .errors import ConfigError
from .format import FORMAT_VERSION
from .kernel import close_on_kernel_shutdown
from .run import Run
from .snapshot import Stager

__all__ = ["start", "shutdown"]

_lock = threading.RLock()
_channels: dict[tuple, tuple[Channel, Stager]] = {}
_runs: dict[int, Run] = {}
_run_ids = itertools.count(1)
EXTENSION = ".alog"


def _channel_for(config: Config) -> tuple[Channel, Stager]:
    writer_options = {"compress_threads": config.compress_threads, "fsync_interval_s": config.fsync_interval_s}
    key = (config.staging_bytes, config.queue_batches, config.flush_interval_s, *writer_options.values())
    pair = _channels.get(key)
    if pair is not None and pair[0].error is None:
        return pair
    channel = Channel(config.staging_bytes, config.queue_batches, config.flush_interval_s, writer_options)
    pair = _channels[key] = (channel, Stager(channel))
    return pair


def _as_config(config: Config | dict | str | os.PathLike | None, level: str | None) -> Config:
    if config is None:
        config = Config()
    elif isinstance(config, dict):
        config = Config.from_dict(config)
    elif isinstance(config, (str, os.PathLike)):
        config = Config.from_yaml(config)
    elif not isinstance(config, Config):
        raise ConfigError(f"config must be a Config, a dict or a YAML path, not {type(config).__name__}")
    if level is not None:
        import msgspec

        level_rank(level)  # replace() does not validate; this names the bad level
        config = msgspec.structs.replace(config, level=level)
    return config


def _unique_path(directory: str, name: str) -> str:
    path = os.path.join(directory, name + EXTENSION)
    for n in itertools.count(1):
        if not os.path.exists(path):
            return path
        path = os.path.join(directory, f"{name}-{n}{EXTENSION}")
    raise AssertionError("unreachable")


def start(directory: str | os.PathLike = "logs", name: str | None = None, *, level: str | None = None,
          config: Config | dict | str | os.PathLike | None = None, metadata: dict[str, Any] | None = None,
          path: str | os.PathLike | None = None, summary: dict | None = None) -> Run:
    """Open a run writing ``<directory>/<name>.alog`` (or exactly ``path``), starting the writer if needed.

    ``level`` overrides ``config.level``. ``metadata`` goes into the file's header frame. With ``summary``
    (a dict naming ``summary_path``), the writer also writes a small JSON summary beside the log when the
    run closes, or, marked incomplete, when the probe dies.
    """
    from .run import encode_value

    config = _as_config(config, level)
    header = {"format_version": FORMAT_VERSION, "asynclog_version": __version__, "level": config.level,
              "created": time.time(), "pid": os.getpid(), "host": socket.gethostname(),
              "metadata": metadata or {}, "config": _config_dict(config)}
    encode_value(header, "cannot log run metadata")
    with _lock:
        if path is None:
            os.makedirs(directory, exist_ok=True)
            name = name or time.strftime("run_%Y%m%d-%H%M%S") + f"_{os.getpid()}"
            path = _unique_path(os.fspath(directory), name)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        path = os.path.abspath(os.fspath(path))
        header["name"] = name or os.path.basename(path).removesuffix(EXTENSION)
        channel, stager = _channel_for(config)
        run_id = next(_run_ids)
        writer_options = {k: getattr(config, k) for k in ("compression", "zstd_level", "min_ratio")}
        import msgspec

        message = msgspec.msgpack.encode([Op.OPEN, run_id, path, header, summary, writer_options])
        channel.request((Op.OPENED, run_id), message)
        run = Run(channel, stager, run_id, path, config)
        _runs[run_id] = run
        close_on_kernel_shutdown(shutdown)  # a Jupyter kernel kills the writer before atexit runs
        return run


def _config_dict(config: Config) -> dict:
    import msgspec

    return msgspec.structs.asdict(config)


def forget(run: Run) -> None:
    with _lock:
        _runs.pop(run.id, None)


def shutdown() -> None:
    """Close every open run, then stop every writer. Runs at interpreter exit; safe to call any time."""
    with _lock:
        runs = list(_runs.values())
    for run in runs:
        try:
            run.close(reason="closed at interpreter exit")
        except Exception:  # noqa: BLE001 - one broken run must not keep the others open
            pass
    with _lock:
        pairs = list(_channels.values())
        _channels.clear()
    for channel, stager in pairs:
        stager.close()
        channel.shutdown()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()
    for run in _runs.values():
        run._forked()
    _runs.clear()
    _channels.clear()


atexit.register(shutdown)
os.register_at_fork(after_in_child=_after_fork_in_child)
