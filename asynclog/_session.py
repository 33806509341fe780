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
import warnings
from typing import Any

import msgspec

from asynclog import __version__
from asynclog import _ranks as ranks
from asynclog import _wire as wire
from asynclog._channel import Channel
from asynclog._files import create_exclusive, folders_to_sync, makedirs, write_start
from asynclog._format import FORMAT_VERSION, SUFFIX, log_start
from asynclog._kernel import close_on_kernel_shutdown
from asynclog._names import check_run_name
from asynclog._records import encode_value
from asynclog._run import Run
from asynclog._snapshot import Stager
from asynclog.config import STAGING_BYTES, Config, level_rank
from asynclog.errors import ConfigError, LogInputError, WriterError

__all__ = ["start", "shutdown", "NameTakenWarning"]

_lock = threading.RLock()
_channels: dict[tuple, tuple[Channel, Stager]] = {}
_runs: dict[int, Run] = {}
_run_ids = itertools.count(1)


class NameTakenWarning(UserWarning):
    """A run's name was taken in its folder, so the run writes ``<name>-1.alog`` (or ``-2``, ...) instead."""


_WRITER_KEYS = ("staging_bytes", "queue_batches", "flush_interval_s", "compress_threads", "fsync_interval_s",
                "timeout_s", "grace_s", "writer_nice")


_FIRST_OPEN_MAX = 32 << 10  # an Open on the writer's command line (as hex) stays well inside one argument's limit


def _channel_for(config: Config, opening: bytes) -> tuple[Channel, Stager]:
    """The writer for this config, which is handed ``opening`` (an encoded Open): runs share one writer when
    these keys agree (the rest is per run). A new writer gets it on its command line, so it holds the run from
    its first instant; a running one through the queue, not waited for. A failure reaches the run's next call."""
    key = tuple(getattr(config, k) for k in _WRITER_KEYS)
    pair = _channels.get(key)
    if pair is None or pair[0].error is not None or pair[1].failure is not None:  # failed: a new writer
        first = opening if len(opening) <= _FIRST_OPEN_MAX else None
        writer_options = wire.WriterOptions(compress_threads=config.compress_threads,
                                            fsync_interval_s=config.fsync_interval_s, grace_s=config.grace_s,
                                            nice=config.writer_nice, probe_pid=os.getpid(), first_open=first)
        channel = Channel(config.staging_bytes, config.queue_batches, config.flush_interval_s, writer_options,
                          config.timeout_s)
        pair = _channels[key] = (channel, Stager(channel))
        if first is not None:
            return pair
    try:
        pair[0].put(opening, "block")
    except WriterError:
        pass  # the writer failed (to start, perhaps): the run, attached next, raises it at its next call
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
        level_rank(level)  # replace() does not validate; this names the bad level
        config = msgspec.structs.replace(config, level=level)
    return config


def _reserve_unique(directory: str, name: str) -> str:
    """Create ``<name>.alog`` (or ``<name>-1.alog``, ...) exclusively: race-free between processes, and a
    name taken by anything, a dangling symlink included, is skipped, never followed."""
    for n in itertools.count():
        path = os.path.join(directory, f"{name}{f'-{n}' if n else ''}{SUFFIX}")
        try:
            create_exclusive(path)
        except FileExistsError:
            continue
        if n:  # stacklevel 4: the caller of start()
            warnings.warn(f"run name {name!r} is taken: {os.path.join(directory, name + SUFFIX)} exists, so this "
                          f"run writes {path}", NameTakenWarning, stacklevel=4)
        return path
    raise AssertionError("unreachable")


def _reserve(directory, name: str | None, path, overwrite: bool) -> tuple[str, str]:
    """The run's absolute path and name; the file is created here (unless ``overwrite``) so no other run,
    in this process or another, can take it."""
    if path is None:
        name = check_run_name(name) if name is not None else time.strftime("run_%Y%m%d-%H%M%S") + f"_{os.getpid()}"
        directory = os.path.abspath(os.fspath(directory))
        makedirs(directory)
        return _reserve_unique(directory, name), name
    path = os.path.abspath(os.fspath(path))
    if "\0" in path:
        raise LogInputError(f"log path {path!r} contains a NUL byte")
    makedirs(os.path.dirname(path))
    if not overwrite:
        try:
            create_exclusive(path)
        except FileExistsError:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it") from None
    return path, (check_run_name(name) if name is not None else os.path.basename(path).removesuffix(SUFFIX))


def start(directory: str | os.PathLike = "logs", name: str | None = None, *, level: str | None = None,
          config: Config | dict | str | os.PathLike | None = None, metadata: dict[str, Any] | None = None,
          path: str | os.PathLike | None = None, summary: dict | None = None, overwrite: bool = False,
          rank: int | None = None, world_size: int | None = None) -> Run:
    """Open a run writing ``<directory>/<name>.alog`` (or exactly ``path``), starting the writer if needed.

    In a job of several ranks (``torch.distributed`` initialised, or ``rank``/``world_size`` given), every rank
    writes its own shard ``<directory>/<name>/rank-NNNNN.alog`` and rank 0 the folder's ``manifest.json``
    (``ranks.py``); ``name`` is then required, and ``asynclog.open(<directory>/<name>)`` reads all shards.

    ``name`` must be a file name (LogInputError for separators, ``..``, NUL, over 200 bytes); when that
    name is taken the run gets ``<name>-1.alog``, ``-2``, ... — ``run.path`` says which, and a
    NameTakenWarning names both paths (silence it with ``warnings.simplefilter("ignore", NameTakenWarning)``
    where numbered names are wanted). An explicit ``path`` that exists is an error (FileExistsError)
    unless ``overwrite=True``. Symlinks are never followed.

    ``level`` overrides ``config.level``. ``metadata`` goes into the file's header frame. With ``summary``
    (a dict naming ``summary_path``), the writer also writes a small JSON summary beside the log when the
    run closes, or, marked incomplete, when the probe dies.
    """
    config = _as_config(config, level)
    where = ranks.placement(rank, world_size)
    if where is not None and config.staging_bytes == STAGING_BYTES:  # left at its default
        config = msgspec.structs.replace(config, staging_bytes=ranks.per_rank_staging(where, config.staging_bytes))
    header = {"format_version": FORMAT_VERSION, "asynclog_version": __version__, "level": config.level,
              "created": time.time(), "pid": os.getpid(), "host": socket.gethostname(),
              "metadata": metadata or {}, "config": _config_dict(config)}
    encode_value(header, "cannot log run metadata")
    options = wire.RunOptions(config.compression, config.zstd_level, config.min_ratio)
    if where is not None:
        path, header["rank"], header["world_size"] = _shard_path(directory, name, path, where), *where
    with _lock:
        path, header["name"] = _reserve(directory, name, path, overwrite)
        if where is not None and where.rank == 0:  # after the reservation: a name used before fails first
            ranks.write_manifest(os.path.dirname(path), name, where)
        start_bytes = b""
        try:
            run_id = next(_run_ids)
            # The file's first bytes are written here, so it reads as a run from now on, even if this process
            # dies before the writer is up.
            first = log_start(encode_value(header, "run metadata"))
            write_start(path, first, overwrite)
            start_bytes = first
            # The writer fsyncs the folders that hold the new name, off this thread (files.py).
            opening = wire.encode(wire.Open(wire.NO_ANSWER, run_id, path, len(first), summary, options,
                                            folders_to_sync(path)))
            channel, stager = _channel_for(config, opening)
        except BaseException:
            _unlink_quietly(path, len(start_bytes))  # the reservation, or only what this start wrote
            raise
        run = Run(channel, stager, run_id, path, config, on_close=forget)
        _runs[run_id] = run
        close_on_kernel_shutdown(shutdown)  # a Jupyter kernel kills the writer before atexit runs
        return run


def _shard_path(directory, name: str | None, path, where: ranks.Placement) -> str:
    """This rank's shard in the run folder every rank finds on its own (rank 0 then writes the manifest)."""
    if path is not None or name is None:
        raise LogInputError("in a job of several ranks, pass name= (the same on every rank) and no path=: "
                            "each rank writes <directory>/<name>/rank-NNNNN.alog")
    folder = os.path.join(os.path.abspath(os.fspath(directory)), check_run_name(name))
    makedirs(folder)
    return os.path.join(folder, ranks.shard_name(where.rank))


def _unlink_quietly(path: str, ours: int = 0) -> None:
    """Remove ``path`` if it still holds only the ``ours`` bytes this start() wrote (its reservation: none)."""
    try:
        if os.path.getsize(path) == ours:
            os.unlink(path)
    except OSError:
        pass


def _config_dict(config: Config) -> dict:
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
    for channel, _ in pairs:
        channel.shutdown()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()
    for run in _runs.values():
        run._forked()
    for channel, _ in _channels.values():
        channel.forget_in_child()  # so the writer sees the parent's death, whatever this child lives on to do
    _runs.clear()
    _channels.clear()


atexit.register(shutdown)
os.register_at_fork(after_in_child=_after_fork_in_child)
