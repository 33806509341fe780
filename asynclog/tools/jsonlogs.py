"""Runs of the probe's earlier JSON logger, imported into asynclog's layout: ``asynclog import SRC ... --out DIR``.

That logger wrote each run once, at ``finalize_log``, as three files in ``<output_directory>/<YYYY-MM-DD>/``:
``entropy_probe_<HH-MM-SS>_<checkpoint>.json.gz`` (``.json`` with ``compress: false``), one JSON object of
nine sections; ``..._summary.json``; ``..._config.yaml``. An import writes the run as DetailedLogger would have,
under the same name in ``DIR/<YYYY-MM-DD>/``, so that ``ls``, ``sweep``, ``show`` and retention see a probe
run (the header's ``layout`` marker, ``TEMPLATE``)::

    JSON logger, main file                        asynclog run
    run_metadata                                  header metadata["run_metadata"], plus local_time
    core_results                                  event core_results
    timing                                        event final_results {timing}
    ground_truth, but for the next key            event ground_truth
    ground_truth.importance_sampling_details      event importance_sampling_details
    batch_statistics.<batch>                      event batch_statistics {batch, ...}, one per batch
    sequences.E_batch: [row, ...]                 stream sequences/E_batch: sequence_id, then the row's keys
    sequences.U_batch: [{..., responses}, ...]    stream sequences/U_batch: one row per response, the prompt's
                                                  keys first
    raw_tensors.<batch>.<key>: nested lists       tensor <batch>/<key>: bool, int64 or float64, as exact
    debug_info, token_data, any other section     event under the section's own key
    _summary.json, _config.yaml                   the sidecars: the config as it was, the summary with
                                                  asynclog's keys added to the logger's own

Nothing is dropped: rows that make no table (a row that is no object, rows with different keys, no rows)
stay one record ``sequences`` {batch, rows}, and a raw value that is no rectangular array of one kind of
number a record ``raw_tensors`` {batch, key, value}. Empty sections (the logger's starting values) write
nothing. The header's ``imported`` says where the run came from (path, size and sha256 of each file); a main
file whose sha256 an import in the same day folder already carries is not imported again. Source files are
only read.

Memory: a main file is read whole, once as bytes, once uncompressed, then as Python objects (a few times its
uncompressed size); one run at a time. ``max_size`` bounds its uncompressed size, so a gzip bomb is refused
before it is unpacked.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import zlib
from datetime import datetime, timezone
from typing import Any, NamedTuple

import msgspec

from asynclog import __version__
from asynclog import _ondisk as ondisk
from asynclog._files import atomic_write
from asynclog._names import check_key
from asynclog.config import parse_yaml
from asynclog.errors import AsyncLogError, ConfigError, LogInputError
from asynclog.probe import layout
from asynclog.tools.analysis import natural_key, read_run

__all__ = ["TEMPLATE", "MAX_DEPTH", "JsonRunError", "JsonRun", "Imported", "find_runs", "read_json_run", "import_run"]

# How the JSON logger named its files; the marker carries it, so retention treats an imported run as one of
# DetailedLogger's (whose default template this is).
TEMPLATE = "entropy_probe_{timestamp}_{checkpoint_name}.json"
MAX_DEPTH = 64  # the logger's own sections nest 6 deep; anything far deeper is not its output
_SOURCE_CONFIG = "_config.yaml"  # the JSON logger's config, beside its run
MAX_SIZE_MIB = 512
SEQUENCE_CHUNK_ROWS = 256
_SIDECAR_BYTES = 16 << 20
_CONFIG_NODES = 1 << 20  # a YAML alias bomb is refused long before it is walked whole
_MAIN = re.compile(r"entropy_probe_.*\.json(\.gz)?\Z")
_NAME = re.compile(r"entropy_probe_(\d{2}-\d{2}-\d{2})_(.+?)(\.json\.gz|\.json)?\Z")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_RAISE_IT = "; --max-size raises the limit"
_PLAIN = (str, int, float, bool, type(None), dict, list)
_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
          float: "a number", type(None): "null"}


class JsonRunError(AsyncLogError, ValueError):
    """A file that is no readable run of the JSON logger; the message says what is wrong, and where."""


class SourceFile(NamedTuple):
    """One file read: what the header's ``imported`` says of it."""

    path: str
    size: int
    sha256: str
    mtime: float

    def described(self) -> dict:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


class JsonRun(NamedTuple):
    """One run of the JSON logger, read and checked: nothing here can fail to be logged but for its size."""

    main: SourceFile
    compressed: bool
    data: dict
    summary: tuple[SourceFile, dict | None] | None  # None: no summary file; a None dict: one that is unusable
    config: tuple[SourceFile, bytes, dict | None] | None  # the config's bytes, and its mapping when it is one
    notes: list[str]  # what a person should know: sidecars that could not be used


class Imported(NamedTuple):
    """Where a run went: ``dest`` is the new log, or the one an earlier import wrote (``new`` False)."""

    source: str
    dest: str
    new: bool
    notes: list[str]  # sidecars that could not be used


# --- finding and reading runs ----------------------------------------------------------------------------
def find_runs(source: str) -> list[str]:
    """``source`` itself when it is a file; else every main file below it (``entropy_probe_*.json.gz`` or
    ``.json``, not ``_summary.json``), in natural order. Links are not followed."""
    if not os.path.isdir(source):
        return [source]
    found = []
    for folder, _, names in os.walk(source):
        for name in names:
            path = os.path.join(folder, name)
            if _MAIN.match(name) and not name.endswith(layout.SUMMARY_SUFFIX) and not os.path.islink(path):
                found.append(path)
    return sorted(found, key=natural_key)


def read_json_run(path: str, max_size: int = MAX_SIZE_MIB << 20) -> JsonRun:
    """The run whose main file is ``path``, with its sidecars; JsonRunError when it is not a readable one."""
    try:
        main, raw = _read_file(path, max_size, _RAISE_IT)
    except OSError as exc:
        raise JsonRunError(f"cannot read it: {exc.strerror or exc}") from None
    compressed = raw[:2] == b"\x1f\x8b"
    data = _parse(_gunzip(raw, max_size) if compressed else raw)
    del raw
    _check_sections(data)
    _check_plain(data)
    notes: list[str] = []
    base = _base(path)
    return JsonRun(main, compressed, data, _read_summary(base + layout.SUMMARY_SUFFIX, notes),
                   _read_config(base + _SOURCE_CONFIG, notes), notes)


def _base(path: str) -> str:
    """The path the sidecars' names are made from: the main file's without ``.json.gz`` or ``.json``."""
    return re.sub(r"(\.json\.gz|\.json)\Z", "", path)


def _read_file(path: str, limit: int, hint: str = "") -> tuple[SourceFile, bytes]:
    """The regular file's bytes (at most ``limit``; JsonRunError beyond, ending with ``hint``) and what
    identifies them. Opened non-blocking, so a FIFO named like a run cannot hang the import."""
    try:
        f = ondisk.open_regular(path)
    except ondisk.NotARegularFile:
        raise JsonRunError("not a regular file") from None
    with f:
        st = os.fstat(f.fileno())
        data = f.read(limit + 1)
    if len(data) > limit:
        raise JsonRunError(f"larger than {limit >> 20} MiB{hint}")
    return SourceFile(os.path.abspath(path), len(data), hashlib.sha256(data).hexdigest(), st.st_mtime), data


def _gunzip(raw: bytes, limit: int) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            data = f.read(limit + 1)
    except EOFError:
        raise JsonRunError("the gzip stream is cut short (the file is truncated)") from None
    except (OSError, zlib.error) as exc:
        raise JsonRunError(f"not a readable gzip file ({exc})") from None
    if len(data) > limit:
        raise JsonRunError(f"larger than {limit >> 20} MiB once uncompressed{_RAISE_IT}")
    return data


def _parse(data: bytes) -> Any:
    """JSON as the logger wrote it (NaN and Infinity included)."""
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise JsonRunError("not UTF-8 text, so not JSON") from None
    except json.JSONDecodeError as exc:
        raise JsonRunError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise JsonRunError("JSON nested too deeply to read") from None


# The sections that must be objects, and those that map each batch to a value of one kind.
_OBJECTS = ("run_metadata", "core_results", "timing", "ground_truth", "token_data", "debug_info")
_PER_BATCH = {"batch_statistics": dict, "sequences": list, "raw_tensors": dict}


def _check_sections(data: Any) -> None:
    """JsonRunError naming the first section (or batch) that is not what the logger writes there."""
    if not isinstance(data, dict):
        raise JsonRunError(f"holds {_kind(data)}, not the object the JSON logger writes")
    for key in data:
        _check_name("event", key, key)
    for section in _OBJECTS:
        _expect(data.get(section, {}), dict, section)
    details = data.get("ground_truth", {}).get("importance_sampling_details", {})
    _expect(details, dict, "ground_truth.importance_sampling_details")
    for section, inner in _PER_BATCH.items():
        for batch, value in _expect(data.get(section, {}), dict, section).items():
            _expect(value, inner, f"{section}.{batch}")
            if section == "batch_statistics" and "batch" in value:
                raise JsonRunError(f"{section}.{batch} has a key 'batch' of its own, which the record's would hide")
    for batch in data.get("sequences", {}):
        _check_name("stream", f"sequences/{batch}", "sequences")
    for batch, values in data.get("raw_tensors", {}).items():
        for key in values:
            _check_name("tensor", f"{batch}/{key}", "raw_tensors")


def _expect(value, kind: type, where: str):
    if not isinstance(value, kind):
        raise JsonRunError(f"{where} is {_kind(value)}, not {_KINDS[kind]}")
    return value


def _check_name(kind: str, name: str, where: str) -> None:
    try:
        check_key(kind, name)
    except LogInputError as exc:
        raise JsonRunError(f"{where}: {exc}") from None


def _kind(value) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _check_plain(value, where: str = "", max_nodes: int | None = None) -> None:
    """JsonRunError unless ``value`` is plain data a log holds: str keys, JSON's kinds of value, integers in
    64 bits, nested at most MAX_DEPTH deep (and, with ``max_nodes``, that many values at most: YAML aliases
    can make a small file a huge tree)."""
    todo, nodes = [(value, where, 0)], 0
    while todo:
        item, path, depth = todo.pop()
        if depth >= MAX_DEPTH:
            raise JsonRunError(f"{_short(path)} is nested deeper than {MAX_DEPTH} levels")
        if type(item) is dict:
            if not all(type(key) is str for key in item):
                raise JsonRunError(f"{_short(path) or 'it'} has a key that is no string")
            pairs = item.items()
        else:
            pairs = enumerate(item)
        for key, child in pairs:
            kind = type(child)
            if kind is int and not -(1 << 63) <= child < 1 << 64:
                raise JsonRunError(f"{_short(_at(path, key))} is an integer beyond 64 bits, which a log cannot hold")
            if kind is dict or kind is list:
                todo.append((child, _at(path, key), depth + 1))
            elif kind not in _PLAIN:
                raise JsonRunError(f"{_short(_at(path, key))} holds a {kind.__name__}, which is no JSON value")
        nodes += len(item)
        if max_nodes is not None and nodes > max_nodes:
            raise JsonRunError(f"{where or 'it'} holds more than {max_nodes} values")


def _short(path: str) -> str:
    return path if len(path) <= 80 else path[:77] + "..."


def _at(path: str, key) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _read_summary(path: str, notes: list[str]) -> tuple[SourceFile, dict | None] | None:
    """The logger's summary beside the main file; its dict is None (and a note says why) when it is unusable,
    and the summary is then made again from the main file."""
    if not os.path.lexists(path):
        return None
    unused = f"its summary {os.path.basename(path)} is not used, but made again from the main file"
    try:
        source, raw = _read_file(path, _SIDECAR_BYTES)
    except (OSError, JsonRunError) as exc:
        notes.append(f"{unused} (it cannot be read: {getattr(exc, 'strerror', None) or exc})")
        return None
    try:
        summary = _expect(_parse(raw), dict, "it")
        _check_plain(summary)
    except JsonRunError as exc:
        notes.append(f"{unused} ({exc})")
        return source, None
    return source, summary


def _read_config(path: str, notes: list[str]) -> tuple[SourceFile, bytes, dict | None] | None:
    """The config sidecar's bytes (copied as they are) and, when it is a YAML mapping of plain values, that."""
    if not os.path.lexists(path):
        return None
    try:
        source, raw = _read_file(path, _SIDECAR_BYTES)
    except (OSError, JsonRunError) as exc:
        notes.append(f"its config {os.path.basename(path)} is not copied ({getattr(exc, 'strerror', None) or exc})")
        return None
    return source, raw, _yaml_mapping(raw)


def _yaml_mapping(raw: bytes) -> dict | None:
    try:
        config = parse_yaml(raw, "the config sidecar")  # bounded: no alias bomb, no depth that recurses too far
        _check_plain(_expect(config, dict, "the config"), "config", _CONFIG_NODES)
    except (ConfigError, JsonRunError, RecursionError, ValueError):
        return None  # copied all the same; only the header goes without it
    return config


# --- writing one run ---------------------------------------------------------------------------------------
class _Naming(NamedTuple):
    """What the run's new files are named after."""

    when: datetime  # local time the run started
    told_by: str  # where ``when`` comes from
    checkpoint: str  # the checkpoint path, or the checkpoint part of the file's name
    level: str | None


def import_run(path: str, out: str, max_size: int = MAX_SIZE_MIB << 20) -> Imported:
    """Import the run whose main file is ``path`` into the output directory ``out``; return where it went.

    JsonRunError (nothing written) when it is no readable run of the JSON logger, or when asynclog refuses a
    value in it; other errors (the output cannot be written) are raised as they are, after what this call
    wrote is removed. One import at a time per day folder (``flock``), so two imports of the same run at once
    write it once.
    """
    run = read_json_run(path, max_size)
    naming = _naming(path, run)
    root = os.path.abspath(out)
    day_dir = os.path.join(root, naming.when.strftime("%Y-%m-%d"))
    os.makedirs(day_dir, exist_ok=True)
    with _locked(day_dir):
        found = _imported_already(day_dir, naming.when, run.main.sha256)
        if found is not None:
            return Imported(path, found, False, run.notes)
        paths = layout.run_paths(root, TEMPLATE, naming.checkpoint, naming.level or "standard", now=naming.when)
        try:
            _write(run, naming, paths)
        except LogInputError as exc:
            raise JsonRunError(f"asynclog cannot log it: {exc}") from None
    return Imported(path, paths.main, True, run.notes)


def _naming(path: str, run: JsonRun) -> _Naming:
    meta = run.data.get("run_metadata", {})
    match = _NAME.match(os.path.basename(path))
    checkpoint = meta.get("checkpoint_path")
    if not isinstance(checkpoint, str) or not checkpoint.strip("/"):
        checkpoint = match.group(2) if match else _base(os.path.basename(path))
    when, told_by = _started(path, meta, match, run.main.mtime)
    level = meta.get("logging_level")
    if not isinstance(level, str):
        level = _get(run.config[2] if run.config else None, "detailed_logging", "level")
    return _Naming(when, told_by, checkpoint, level if isinstance(level, str) else None)


def _started(path: str, meta: dict, match, mtime: float) -> tuple[datetime, str]:
    """When the run started, in local time: its ``timestamp``, else its file's name and day folder, else the
    file's mtime (when it was written, at the run's end)."""
    stamp = meta.get("timestamp")
    if isinstance(stamp, str):
        with contextlib.suppress(ValueError, OverflowError, OSError):
            when = datetime.fromisoformat(stamp)
            when = when.astimezone().replace(tzinfo=None) if when.tzinfo else when
            if when.year >= 1000:  # four digits: a day folder's name
                return when, "run_metadata.timestamp"
    day = os.path.basename(os.path.dirname(os.path.abspath(path)))
    if match and _DAY.match(day):
        with contextlib.suppress(ValueError):
            return datetime.strptime(f"{day} {match.group(1)}", "%Y-%m-%d %H-%M-%S"), "file name"
    return datetime.fromtimestamp(mtime), "file mtime"


@contextlib.contextmanager
def _locked(folder: str):
    """``flock`` on the folder itself (never through a link), released when the block ends."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _imported_already(day_dir: str, when: datetime, sha256: str) -> str | None:
    """An earlier import of the main file with this sha256 in the day folder: only logs named for the run's
    time are read (a header and footer each)."""
    prefix = TEMPLATE.split("{checkpoint_name}")[0].format(timestamp=when.strftime("%H-%M-%S"))
    for name in sorted(os.listdir(day_dir)):
        if name.startswith(prefix) and name.endswith(layout.SUFFIX):
            path = os.path.join(day_dir, name)
            imported = _get(read_run(path).header, "metadata", "imported", "main", "sha256")
            if imported == sha256:
                return path
    return None


def _get(mapping, *keys):
    for key in keys:
        mapping = mapping.get(key) if isinstance(mapping, dict) else None
    return mapping


def _write(run: JsonRun, naming: _Naming, paths: layout.RunPaths) -> None:
    """The log, then its summary and config sidecars, each with the source's mtime (retention orders runs by
    it); on any failure, every file this wrote is removed."""
    from asynclog._session import start
    from asynclog.config import LEVELS, Config

    imported = _provenance(run, naming)
    written = [paths.main]
    try:
        log = start(path=paths.main, name=layout.checkpoint_name(naming.checkpoint), overwrite=True,
                    config=Config(staging_bytes=64 << 20), level=naming.level if naming.level in LEVELS else None,
                    metadata=_header(run, naming, paths, imported))
        try:
            _write_sections(log, run.data)
        except BaseException:
            log.close(complete=False, reason="the import failed")
            raise
        log.close()
        summary = _summary(run, naming, paths, imported)
        atomic_write(paths.summary, msgspec.json.format(msgspec.json.encode(summary), indent=2), replace=False)
        written.append(paths.summary)
        if run.config is not None:
            atomic_write(paths.config, run.config[1], replace=False)
            written.append(paths.config)
        for path in written:
            os.utime(path, (run.main.mtime, run.main.mtime))
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise


def _provenance(run: JsonRun, naming: _Naming) -> dict:
    summary, config = run.summary, run.config
    return {"from": "the JSON logger (entropy_probe_*.json.gz)", "asynclog_version": __version__,
            "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "main": {**run.main.described(), "compressed": run.compressed},
            "summary": summary[0].described() if summary else None,
            "config": config[0].described() if config else None, "local_time_from": naming.told_by}


def _header(run: JsonRun, naming: _Naming, paths: layout.RunPaths, imported: dict) -> dict:
    config = run.config[2] if run.config else None
    header = {"run_metadata": _with_local_time(run.data.get("run_metadata", {}), naming)}
    if config is not None:
        header["probe_config"] = config
        if isinstance(config.get("detailed_logging"), dict):
            header["detailed_logging"] = config["detailed_logging"]
    return {**header, "imported": imported, "layout": layout.marker(TEMPLATE, paths)}


def _with_local_time(metadata: dict, naming: _Naming) -> dict:
    """The logger's run metadata (its ``timestamp`` is local time, no zone) and asynclog's ``local_time``."""
    return {**metadata, "local_time": metadata.get("local_time", naming.when.isoformat(timespec="seconds"))}


def _write_sections(log, data: dict) -> None:
    """Every section in the file's order, ``timing`` last as ``final_results`` (DetailedLogger's last record)."""
    for key, value in data.items():
        if key not in ("run_metadata", "timing"):
            _SECTIONS.get(key, _write_other)(log, key, value)
    if "timing" in data:
        log.event("final_results", timing=data["timing"])


def _write_event(log, key: str, value: dict) -> None:
    if value:  # empty: the logger's starting value, nothing logged
        log.event(key, **value)


def _write_ground_truth(log, key: str, truth: dict) -> None:
    truth = dict(truth)
    details = truth.pop("importance_sampling_details", None)
    _write_event(log, key, truth)
    if details is not None:
        log.event("importance_sampling_details", **details)


def _write_batch_statistics(log, key: str, stats: dict) -> None:
    for batch, values in stats.items():
        log.event(key, batch=batch, **values)


def _write_sequences(log, key: str, sequences: dict) -> None:
    for batch, rows in sequences.items():
        table = _table(rows)
        if table is None:
            log.event(key, batch=batch, rows=rows)
            continue
        stream = log.stream(f"{key}/{batch}", chunk_rows=SEQUENCE_CHUNK_ROWS)
        for row in table:
            stream.append(**row)
        stream.flush()


def _table(rows: list) -> list[dict] | None:
    """The rows as one table, ``sequence_id`` first and a U-batch prompt's responses one row each (the
    prompt's keys first); None when they make none."""
    flat = []
    for row in rows:
        if not isinstance(row, dict):
            return None
        responses = row.get("responses")
        if responses is None:
            flat.append(row)
            continue
        if not isinstance(responses, list) or not responses or not all(isinstance(r, dict) for r in responses):
            return None
        prompt = {k: v for k, v in row.items() if k != "responses"}
        if any(prompt.keys() & response.keys() for response in responses):
            return None
        flat += [{**prompt, **response} for response in responses]
    if not flat or "sequence_id" in flat[0] or any(row.keys() != flat[0].keys() for row in flat):
        return None
    return [{"sequence_id": n, **row} for n, row in enumerate(flat)]


def _write_raw_tensors(log, key: str, tensors: dict) -> None:
    import torch

    for batch, values in tensors.items():
        for name, value in values.items():
            dtype = _exact_dtype(value)
            if dtype is None:
                log.event(key, batch=batch, key=name, value=value)
            else:
                log.tensor(f"{batch}/{name}", torch.tensor(value, dtype=getattr(torch, dtype)))


def _exact_dtype(value) -> str | None:
    """The dtype holding ``value`` exactly when it is a number or a rectangular, non-empty nested list of one
    kind of number (as ``tensor.tolist()`` gives); else None."""
    level = [value]
    while type(level[0]) is list:
        if any(type(v) is not list or len(v) != len(level[0]) for v in level):
            return None
        level = [x for v in level for x in v]
        if not level:
            return None  # an empty dimension: nothing tells what the dtype was
    kinds = set(map(type, level))
    if kinds == {bool}:
        return "bool"
    ints = [v for v in level if type(v) is int] if int in kinds else []
    if not kinds <= {int, float}:
        return None
    if float not in kinds:
        return "int64" if min(ints) >= -(1 << 63) and max(ints) < 1 << 63 else None
    return "float64" if not ints or max(map(abs, ints)) <= 1 << 53 else None


def _write_other(log, key: str, value) -> None:
    """A section asynclog has no place for: a record under its own key."""
    if isinstance(value, dict):
        log.event(key, **value)
    else:
        log.event(key, value=value)


_SECTIONS = {"core_results": _write_event, "ground_truth": _write_ground_truth, "token_data": _write_event,
             "debug_info": _write_event, "batch_statistics": _write_batch_statistics,
             "sequences": _write_sequences, "raw_tensors": _write_raw_tensors}


def _summary(run: JsonRun, naming: _Naming, paths: layout.RunPaths, imported: dict) -> dict:
    """The logger's summary with its keys and values as they were, and what asynclog's summaries add: paths,
    ``level``, ``complete``, ``local_time`` and the ground truth's ``diagnostics`` (where ``ls`` reads ESS)."""
    theirs = run.summary[1] if run.summary and run.summary[1] is not None else _summary_from(run.data)
    summary = {"log_path": paths.main, "summary_path": paths.summary,
               "config_path": paths.config if run.config else None, "level": naming.level, **theirs}
    if isinstance(summary.get("run_metadata"), dict):
        summary["run_metadata"] = _with_local_time(summary["run_metadata"], naming)
    diagnostics = _get(run.data, "ground_truth", "diagnostics")
    truth = summary.get("ground_truth")
    if isinstance(diagnostics, dict) and isinstance(truth, dict) and "diagnostics" not in truth:
        summary["ground_truth"] = {**truth, "diagnostics": diagnostics}
    return {**summary, "complete": summary.get("complete", True), "reason": summary.get("reason"),
            "imported": imported}


def _summary_from(data: dict) -> dict:
    """The summary the logger makes of a run, for a run whose summary file is missing or unusable."""
    truth = data.get("ground_truth", {})
    diagnostics = truth.get("diagnostics")
    return {"run_metadata": data.get("run_metadata", {}), "core_results": data.get("core_results", {}),
            "timing": data.get("timing", {}),
            "ground_truth": {"H_orig": truth.get("H_orig"), "H_upd": truth.get("H_upd"),
                             "deltaH_true": truth.get("deltaH_true"),
                             "ESS": diagnostics.get("ESS") if isinstance(diagnostics, dict) else None},
            "batch_statistics": data.get("batch_statistics", {})}
