"""Config: the writer's knobs and the probe's ``detailed_logging`` section, and the one reader of config files.

``read_config`` is how every entry point (``Config.from_yaml``, ``start(config=...)``, ``DetailedLogger``)
reads a config, so one file means one thing wherever it is passed. Errors name the file, the key, the
choices, and the key most likely meant.
"""

from __future__ import annotations

import difflib
import os
import typing
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import msgspec

from .errors import ConfigError
from .layout import check_checkpoint_rule, check_template

__all__ = ["Config", "DetailedLoggingConfig", "Settings", "LEVELS", "SECTIONS", "level_rank", "read_config",
           "level_config_path", "load_yaml", "convert_section"]

STAGING_BYTES = 256 << 20  # the default pool; ranks of one node share a budget instead (ranks.py)
LEVELS = ("minimal", "standard", "detailed", "debug")
Level = Literal["minimal", "standard", "detailed", "debug"]
Policy = Literal["block", "drop", "error"]
SECTIONS = ("detailed_logging", "asynclog")  # the probe's logging plan; asynclog's engine


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
    writer_nice:        how much lower the writer's CPU priority is than the probe's (0-19; 0: the same). A
                        higher value leaves a CPU-bound probe its cores, at the risk of backpressure when
                        the writer falls behind; benchmarks/bench_contention.py measures both.
    """

    level: Level = "standard"
    policy: Policy = "block"
    staging_bytes: int = STAGING_BYTES
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
    writer_nice: int = 0

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
        if not 0 <= self.writer_nice <= 19:
            raise ConfigError(f"config key 'writer_nice' must be in 0..19, got {self.writer_nice}")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "Config":
        """The engine settings of a YAML file, read as ``read_config`` reads it (a level name loads that level)."""
        return read_config(path).engine

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "Config":
        """The engine settings of a mapping, read as ``read_config`` reads it."""
        return read_config(data, source).engine

    @classmethod
    def for_level(cls, level: str) -> "Config":
        """The level config asynclog ships (``asynclog/configs/<level>.yaml``)."""
        return cls.from_yaml(level_config_path(level))


class DetailedLoggingConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The probe's ``detailed_logging`` section (the plan's DetailedLogger settings).

    enabled:           master switch; off, every call returns at once and nothing is started.
    level:             minimal < standard < detailed < debug (docs/PROBE.md lists what each adds).
    log_sequences:     per-sequence rows (needs level detailed); false switches them off.
    log_tokens:        per-token rows (needs level debug); off unless set, as in the plan and the user's logger.
    log_raw_tensors:   raw tensors (needs level debug); off unless set, as in the plan and the user's logger.
    output_directory:  root of the day folders.
    filename_template: fields {timestamp}, {checkpoint_name}, {date}, {level}; a .json/.json.gz suffix
                       becomes .alog.
    checkpoint_name:   how {checkpoint_name} (and the runs' label in ls, sweep, show, plot) comes from the
                       checkpoint path: auto (the component nearest the end that is not a generic one such
                       as model, adapter, lora, final: step_60/model is step_60), last (the last component),
                       or a regular expression whose first group, or whole match, names it
                       (``layout.checkpoint_name``).
    compress:          false writes frames uncompressed (asynclog ``compression: raw``).
    max_files:         keep the newest this many runs under output_directory (0 keeps all).
    run_name:          the name every rank of a job shares, in place of {timestamp} (docs/PROBE.md); unset, a
                       launcher's job id is used, or DetailedLogger(broadcast_name=True).
    """

    enabled: bool = False
    level: Level = "standard"
    log_sequences: bool = True
    log_tokens: bool = False
    log_raw_tensors: bool = False
    output_directory: str = "entropy_experiments/logs"
    filename_template: str = "entropy_probe_{timestamp}_{checkpoint_name}.json"
    checkpoint_name: str = "auto"
    compress: bool = True
    max_files: int = 50
    run_name: str | None = None

    def __post_init__(self) -> None:
        if self.max_files < 0:
            raise ConfigError(f"config key 'max_files' must be >= 0 (0 keeps every run), got {self.max_files}")
        check_template(self.filename_template)
        check_checkpoint_rule(self.checkpoint_name)


class Settings(NamedTuple):
    """A config as every entry point reads it: the probe's section, the engine's, and the mapping given."""

    probe: DetailedLoggingConfig
    engine: Config
    data: dict


def read_config(config: Mapping | str | os.PathLike | None, source: str = "<config>") -> Settings:
    """The one reader behind ``Config.from_yaml``, ``start(config=...)`` and ``DetailedLogger(config=...)``.

    ``config`` is a YAML path, a level name (the shipped config of that level), a mapping, or None. A mapping
    with a ``detailed_logging`` and/or an ``asynclog`` section uses those (other top-level keys are the probe's
    own); one with neither is a flat mapping of ``Config`` keys. The level may be set in either section (or
    flat); set differently in both, it is an error. ``compress: false`` means ``compression: raw``. Misspelt
    sections and keys are ConfigErrors with a suggestion, naming the file.
    """
    data, source = _mapping(config, source)
    probe_data, engine_data, engine_where = _split(data, source)
    probe = convert_section(probe_data, DetailedLoggingConfig, f"{source} [detailed_logging]")
    engine = convert_section(engine_data, Config, engine_where)
    levels = {probe_data.get("level"), engine_data.get("level")} - {None}
    if len(levels) > 1:
        raise ConfigError(f"{source}: key 'level' is {probe.level!r} in detailed_logging but {engine.level!r} "
                          "in asynclog; set it in one place")
    level = levels.pop() if levels else probe.level
    changes = {"level": level}
    if not probe.compress:
        changes["compression"] = "raw"
    return Settings(msgspec.structs.replace(probe, level=level), msgspec.structs.replace(engine, **changes), data)


def level_config_path(level: str) -> str:
    """Where the shipped config of ``level`` lies (a file inside the installed package)."""
    level_rank(level)
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", f"{level}.yaml")


def _mapping(config: Any, source: str) -> tuple[dict, str]:
    if config is None:
        return {}, source
    if isinstance(config, str) and config in LEVELS and not os.path.exists(config):
        config = level_config_path(config)
    if isinstance(config, (str, os.PathLike)):
        return load_yaml(config), os.fspath(config)
    if isinstance(config, Mapping):
        return dict(config), source
    raise ConfigError(f"config must be a mapping, a YAML path or a level name, not {type(config).__name__}")


def _split(data: dict, source: str) -> tuple[dict, dict, str]:
    """(detailed_logging section, engine keys, where the engine keys came from) of a config mapping."""
    present = [name for name in SECTIONS if name in data]
    if not present:
        return {}, data, source
    loose = set(Config.__struct_fields__) | set(DetailedLoggingConfig.__struct_fields__)
    for key in data:
        if key in SECTIONS:
            continue
        if isinstance(key, str) and difflib.get_close_matches(key, SECTIONS, n=1, cutoff=0.8):
            raise ConfigError(f"{source}: unknown section {key!r}{_suggestion(key, SECTIONS)}")
        if key in loose:
            raise ConfigError(f"{source}: key {key!r} is outside the {' and '.join(map(repr, present))} "
                              "section(s); move it into one of them")
    return _section(data, "detailed_logging", source), _section(data, "asynclog", source), f"{source} [asynclog]"


def _section(data: dict, key: str, source: str) -> dict:
    section = data.get(key)
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{source}: config key {key!r} must be a mapping, not {type(section).__name__}")
    return dict(section)


def load_yaml(path: str | os.PathLike) -> dict:
    """Parse a YAML mapping; an unreadable file or a non-mapping is a ConfigError naming the file."""
    import yaml  # here: a probe that passes dicts never pays for importing it

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
        raise ConfigError(f"{source}: {_explain(exc, struct_type)}") from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _explain(exc: msgspec.ValidationError, struct_type: type) -> str:
    """msgspec says "... - at `$.key`"; say "key 'key': ...", with the choices or the key meant."""
    text = str(exc)
    fields = struct_type.__struct_fields__
    if " - at `$." in text:
        message, _, path = text.rpartition(" - at `$.")
        key = path.rstrip("`")
        choices = typing.get_args(typing.get_type_hints(struct_type).get(key)) if key in fields else ()
        if choices and all(isinstance(choice, str) for choice in choices):
            message += f"; {key} must be one of {', '.join(choices)}"
        return f"key {key!r}: {message}"
    if text.startswith("Object contains unknown field"):
        key = text.split("`")[1]
        candidates = fields + SECTIONS if struct_type is Config else fields
        return f"unknown key {key!r}{_suggestion(key, candidates)}"
    return text


def _suggestion(key: str, candidates) -> str:
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
