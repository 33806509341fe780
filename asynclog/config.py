"""Config: the writer's knobs, as a msgspec Struct loadable from YAML with errors that name the key and file."""

from __future__ import annotations

import os
from typing import Any, Literal

import msgspec
import yaml

from .errors import ConfigError

__all__ = ["Config", "LEVELS", "level_rank", "load_yaml", "convert_section"]

LEVELS = ("minimal", "standard", "detailed", "debug")
Level = Literal["minimal", "standard", "detailed", "debug"]
Policy = Literal["block", "drop", "error"]


def level_rank(level: str) -> int:
    """0 for minimal up to 3 for debug; a clear error for anything else."""
    try:
        return LEVELS.index(level)
    except ValueError:
        raise ConfigError(f"level must be one of {', '.join(LEVELS)}, not {level!r}") from None


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How a run is logged. Every field has a default; YAML files under ``configs/`` set them per level.

    level:              what the run keeps: minimal < standard < detailed < debug (see ``Run.at``).
    policy:             when the queue or staging pool is full: block (backpressure), drop (counted), error.
    staging_bytes:      size of the shared-memory pool tensor snapshots and stream chunks are copied into.
    queue_batches:      hand-overs in flight from the probe to the writer before the policy applies.
    batch_bytes:        events are batched in the probe's process up to this many encoded bytes ...
    batch_records:      ... or this many records, then handed over in one message.
    flush_interval_s:   a partial batch is handed over at least this often; it bounds what a crash loses.
    fsync_interval_s:   the writer fsyncs the file at least this often (0: only at close).
    compression:        auto (compress what a sample says compresses), zstd (always), raw (never).
    zstd_level:         zstandard level for compressed frames.
    min_ratio:          auto mode compresses a large body only when a sample shrinks by at least this ratio.
    compress_threads:   writer threads compressing frames; 0 picks from the cores available.
    on_write_error:     when the writer cannot write the run (full disk, I/O error): ``raise`` a WriterError
                        on the run's next call (default), or ``warn`` once and stop logging that run.
    timeout_s:          the longest any call waits for the writer (a flush, a close, a full queue or pool
                        under ``block``); then WriterError says what it waited for.
    grace_s:            after a SIGTERM/SIGINT/SIGHUP to the process group the writer serves on this long for
                        the probe's handlers to log and close, then closes every open run itself.
    """

    level: Level = "standard"
    policy: Policy = "block"
    staging_bytes: int = 256 << 20
    queue_batches: int = 64
    batch_bytes: int = 256 << 10
    batch_records: int = 4096
    flush_interval_s: float = 0.2
    fsync_interval_s: float = 1.0
    compression: Literal["auto", "zstd", "raw"] = "auto"
    zstd_level: int = 3
    min_ratio: float = 1.25
    compress_threads: int = 0
    on_write_error: Literal["raise", "warn"] = "raise"
    timeout_s: float = 120.0
    grace_s: float = 30.0

    def __post_init__(self) -> None:
        positive = ("staging_bytes", "queue_batches", "batch_bytes", "batch_records", "flush_interval_s", "timeout_s",
                    "grace_s")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"config key {name!r} must be positive, got {getattr(self, name)!r}")
        if self.staging_bytes < 1 << 20:
            raise ConfigError(f"config key 'staging_bytes' must be at least 1 MiB, got {self.staging_bytes}")
        if not 1 <= self.zstd_level <= 22:
            raise ConfigError(f"config key 'zstd_level' must be in 1..22, got {self.zstd_level}")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, section: str | None = "asynclog") -> "Config":
        """Load from a YAML file: its ``section`` mapping when present (and ``section`` is set), else the top level."""
        data = load_yaml(path)
        if section is not None and section in data:
            data = data[section]
            where = f"{os.fspath(path)} [{section}]"
        else:
            where = os.fspath(path)
        return convert_section(data, cls, where)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "Config":
        return convert_section(data, cls, source)


def load_yaml(path: str | os.PathLike) -> dict:
    """Parse a YAML mapping; an unreadable file or a non-mapping is a ConfigError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {os.fspath(path)}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {os.fspath(path)} must be a mapping, not {type(data).__name__}")
    return data


def convert_section(data: Any, struct_type: type, source: str):
    """Validate a mapping into ``struct_type``; the error names the offending key and where it came from."""
    try:
        return msgspec.convert(data, struct_type, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_explain(exc)}") from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _explain(exc: msgspec.ValidationError) -> str:
    """msgspec says "... - at `$.key`"; say "key 'key': ..." instead."""
    text = str(exc)
    if " - at `$." in text:
        message, _, path = text.rpartition(" - at `$.")
        return f"key {path.rstrip('`')!r}: {message}"
    if text.startswith("Object contains unknown field"):
        return "unknown key " + text.split("`")[1].join("''")
    return text
