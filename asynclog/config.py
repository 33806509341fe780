"""Config: the writer's knobs and the probe's ``detailed_logging`` section, and the one reader of config files.

``read_config`` is how every entry point (``Config.from_yaml``, ``start(config=...)``, ``DetailedLogger``)
reads a config, so one file means one thing wherever it is passed. Errors name the file, the key, the
choices, and the key most likely meant. ``parse_yaml`` is the one YAML loader, bounded in size, alias
expansion and depth, so that a hostile file is one ConfigError line too.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import stat
import string
import typing
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import msgspec

from asynclog.errors import ConfigError

__all__ = ["Config", "check_template", "check_checkpoint_rule", "checkpoint_pattern", "TEMPLATE_FIELDS", "CHECKPOINT_RULES", "DetailedLoggingConfig", "Settings", "LEVELS", "SECTIONS", "level_rank", "read_config",
           "level_config_path", "load_yaml", "parse_yaml", "convert_section"]

STAGING_BYTES = 256 << 20  # the default pool; ranks of one node share a budget instead (ranks.py)
LEVELS = ("minimal", "standard", "detailed", "debug")
Level = Literal["minimal", "standard", "detailed", "debug"]
Policy = Literal["block", "drop", "error"]
SECTIONS = ("detailed_logging", "asynclog")  # the probe's logging plan; asynclog's engine
# A config is a page of settings. These bounds refuse, as one ConfigError, what no config needs and what would
# make a small file cost gigabytes or a traceback: aliases that expand it ("billion laughs"), nesting that
# exhausts the parser's recursion, a file too large to be a config.
MAX_CONFIG_BYTES = 1 << 20  # the file; and the document as if every alias were written out in full
MAX_CONFIG_DEPTH = 32  # levels of nesting (the probe's configs have 3 or 4; a log keeps values 32 deep)


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


# The probe section's two checked strings: its file name template and its checkpoint naming rule. Their grammar is
# part of the config's schema, so it lives here; asynclog.probe.layout uses it to name files.
TEMPLATE_FIELDS = frozenset({"timestamp", "checkpoint_name", "date", "level"})
_MAX_WIDTH = 255  # the widest field a template may format (a file name has at most 255 bytes)
CHECKPOINT_RULES = ("auto", "last")  # anything else in ``checkpoint_name`` is a regular expression


@functools.lru_cache(maxsize=32)
def checkpoint_pattern(rule: str) -> re.Pattern:
    try:
        return re.compile(rule)
    except (re.error, TypeError) as exc:
        raise ConfigError(f"config key 'checkpoint_name': {rule!r} is neither auto, last nor a regular "
                          f"expression ({exc})") from None


def check_checkpoint_rule(rule: str) -> None:
    """A ConfigError naming ``checkpoint_name`` unless ``rule`` is ``auto``, ``last`` or a regular expression."""
    if not isinstance(rule, str):
        raise ConfigError(f"config key 'checkpoint_name' must be auto, last or a regular expression, not {rule!r}")
    if rule not in CHECKPOINT_RULES:
        checkpoint_pattern(rule)


def check_template(template: str) -> None:
    """A ConfigError naming ``filename_template`` unless it formats with the known fields into one file name.

    A field's format spec may pad or cut (``{checkpoint_name:.20}``), to a width of at most _MAX_WIDTH: a
    width of 10**9 would build a gigabyte-long name before it could be cut to _MAX_NAME."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"config key 'filename_template': {exc}") from None
    fields = {f for _, f, _, _ in parsed if f is not None}
    unknown = fields - TEMPLATE_FIELDS
    if unknown:
        raise ConfigError(f"config key 'filename_template': unknown field(s) {sorted(unknown)}; "
                          f"use {sorted(TEMPLATE_FIELDS)}")
    if "/" in template or "\\" in template or not template.strip():
        raise ConfigError("config key 'filename_template' must be a file name, not a path")
    for _, field, spec, _ in parsed:
        if spec and ("{" in spec or any(int(n) > _MAX_WIDTH for n in re.findall(r"\d+", spec))):
            raise ConfigError(f"config key 'filename_template': the format of {{{field}}} ({spec!r}) may not nest "
                              f"fields or ask for a width over {_MAX_WIDTH}")
    try:
        template.format(**dict.fromkeys(TEMPLATE_FIELDS, "x"))
    except ValueError as exc:  # a spec strings do not take: {timestamp:d}
        raise ConfigError(f"config key 'filename_template': {exc}") from None


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
    """Parse a YAML mapping (``parse_yaml``'s bounds); an unreadable file or a non-mapping is a ConfigError naming
    the file. Opened without blocking, so a FIFO named as a config is refused rather than waited on."""
    source = os.fspath(path)
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ConfigError(f"config {source} is not a regular file")
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config {source}: {exc.strerror or exc}") from exc
    data = parse_yaml(raw, source)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {source} must be a mapping, not {type(data).__name__}")
    return data


def parse_yaml(raw: bytes, source: str) -> Any:
    """The YAML document in ``raw`` (UTF-8), as ``yaml.safe_load`` reads it, within the bounds above: at most
    MAX_CONFIG_BYTES, also once each alias is expanded (an alias that refers to itself expands without end), and at
    most MAX_CONFIG_DEPTH levels deep, also through aliases. Anything else is one ConfigError line naming
    ``source``. This is the one YAML loader: every config and config sidecar asynclog reads goes through it."""
    import yaml  # here: a probe that passes dicts never pays for importing it

    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {source} is larger than {MAX_CONFIG_BYTES >> 20} MiB, which no config needs")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {source} is not UTF-8 text (byte {raw[exc.start]:#04x} at offset "
                          f"{exc.start})") from None
    try:
        loader = _bounded_loader(yaml)(text)  # PyYAML checks every character here (a NUL is a ReaderError)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {source}: {_one_line(exc)}") from None
    loader.name = source
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _measure(node, 0, {}, set(), [0])
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {source}: {_one_line(exc)}") from None
    except (ValueError, OverflowError) as exc:  # a value the constructor cannot make (an int of 10**5 digits)
        raise ConfigError(f"config {source}: {exc}") from None
    finally:
        loader.dispose()


@functools.cache
def _bounded_loader(yaml) -> type:
    """PyYAML's safe loader, refusing a node deeper than MAX_CONFIG_DEPTH as it composes it: the composer recurses
    once per level, so a deep file would otherwise end in RecursionError before anything could be checked."""

    class BoundedLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            if self.depth >= MAX_CONFIG_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_CONFIG_DEPTH} levels",
                                                  self.peek_event().start_mark)
            self.depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return BoundedLoader


def _measure(node, depth: int, seen: dict, open_: set, total: list) -> int:
    """The height of ``node``'s tree with every alias expanded, adding its expanded size (a unit per node, and a
    scalar's characters) to ``total[0]``; ConfigError past the bounds. A node is walked once (``seen``: id ->
    (size, height)), so a billion laughs costs its few nodes, not its expansion. An anchor comes before its
    aliases, so a node is first met where it is written, within the depth composing allowed."""
    import yaml

    if id(node) in open_:
        raise yaml.composer.ComposerError(None, None, "an alias refers to a node that holds it", node.start_mark)
    if id(node) not in seen:
        open_.add(id(node))
        before = total[0]
        total[0] += 1 + (len(node.value) if isinstance(node, yaml.ScalarNode) else 0)
        children = [] if isinstance(node, yaml.ScalarNode) else node.value
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in children for child in pair]
        height = 1 + max((_measure(child, depth + 1, seen, open_, total) for child in children), default=-1)
        seen[id(node)] = total[0] - before, height
        open_.discard(id(node))
    else:
        size, height = seen[id(node)]
        total[0] += size
    if depth + height >= MAX_CONFIG_DEPTH:
        raise yaml.composer.ComposerError(None, None, f"aliases nest it deeper than {MAX_CONFIG_DEPTH} levels",
                                          node.start_mark)
    if total[0] > MAX_CONFIG_BYTES:
        raise yaml.composer.ComposerError(None, None, f"aliases expand it past {MAX_CONFIG_BYTES >> 20} MiB",
                                          node.start_mark)
    return height


def _one_line(exc) -> str:
    """A YAML error as one line: the problem and where (PyYAML's own message spans lines and quotes the file)."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


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
