"""Looking at runs on disk: ``asynclog ls``, ``show`` and ``sweep``, and ``asynclog.scan``.

Everything here reads what a run leaves around its frames, never the frames themselves: the
``_summary.json`` sidecar a DetailedLogger run writes, the log's header frame, and its footer, found through
the trailer, each through ``asynclog/ondisk.py`` (which opens nothing that is not a regular file, reads each
within a limit, and checks each sidecar against its typed schema). That is a handful of small reads per run;
``ls``, ``sweep`` and ``scan`` keep each run's row in an index file in its folder (``asynclog/index.py``), so a
run whose files have not changed is not read again and 10,000 runs list in well under a second. Only the
preamble, the header frame and the footer are checked; ``asynclog verify`` checks every frame.

A run's status:

- ``complete``: the footer says the run closed normally;
- ``incomplete``: a footer marked incomplete (with its reason: e.g. the probe was killed), or no footer at
  all (the writer was killed, or the run is still being written), or a rank of a run folder without its shard;
- ``damaged``: the file cannot be read, or its preamble, header frame or footer fails its checks, or a sidecar
  (its summary; a run folder's manifest) is not what asynclog writes: the reason names the file and the key.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
import warnings as warnings_module
from datetime import datetime
from typing import Any, Iterator

import msgspec

from asynclog import __version__
from asynclog import _format as fmt
from asynclog import _ondisk as ondisk
from asynclog._ondisk import is_run_folder
from asynclog._ondisk import run_files as run_sources
from asynclog._tables import need
from asynclog.errors import CorruptLogError
from asynclog.probe.columns import RESULTS, result_values
from asynclog.probe.layout import checkpoint_name, sanitize_name
from asynclog.tools import index
from asynclog.tools._table import cell, human_size, render

__all__ = ["COLUMNS", "NUMBERS", "RunFacts", "find_logs", "read_run", "row", "rows_below", "run_sources", "scan",
           "warnings_for", "describe"]

# One row per run, in this order, for `sweep --csv/--json` and `scan`.
# The probe's results (asynclog.probe.columns) sit between what describes the run and what logging cost.
COLUMNS = ("path", "date", "time", "checkpoint", "level", "status", "reason", "size", *RESULTS, "logging_fraction",
           "dropped", "config_hash")
# The columns that hold numbers (or None); the others hold text (or None).
NUMBERS = frozenset({"size", *RESULTS, "logging_fraction", "dropped"})
_json = msgspec.json.Encoder()


# --- one run, from its summary, header and footer ----------------------------------------------------------
class RunFacts:
    """What ``read_run`` found about one log: its status and the small maps that describe it."""

    def __init__(self, path: str):
        self.path = path
        self.size: int | None = None
        self.status = "complete"
        self.reason: str | None = None
        self.header: dict = {}
        self.footer: dict | None = None  # without its index
        self.summary: dict | None = None  # checked against ondisk.Summary: the keys the tools read are typed
        self.problems: list[str] = []  # with the sidecars, not the log (also in ``reason``: the run is damaged)

    def damage(self, why: str) -> None:
        """Mark the run damaged, adding ``why`` to what is already wrong with it."""
        self.reason = why if self.status == "complete" or not self.reason else f"{self.reason}; {why}"
        self.status = "damaged"

    @property
    def stats(self) -> dict:
        stats = (self.footer or {}).get("stats") or (self.summary or {}).get("stats")
        return stats if isinstance(stats, dict) else {}

    @property
    def metadata(self) -> dict:
        """The probe's ``run_metadata``: from the summary, else from the header frame; {} for a plain run."""
        found = _get(self.summary, "run_metadata") or _get(self.header, "metadata", "run_metadata")
        return found if isinstance(found, dict) else {}


def _get(mapping, *keys):
    """``mapping[k1][k2]...``, or None where a level is missing or not a map."""
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def find_logs(directory: str | os.PathLike) -> list[str]:
    """Every run below ``directory``, in natural order: a regular ``.alog`` file, or the run folder of a job
    of several ranks (one run, however many shards: ``ranks.py``). Links are not followed."""
    found = [os.path.join(folder, name) for folder, names in _walk(directory) for name in names]
    return sorted(found, key=natural_key)


def _walk(directory: str | os.PathLike) -> Iterator[tuple[str, list[str]]]:
    """Each folder below ``directory`` with the names of the runs directly in it."""
    todo = [os.fspath(directory)]
    while todo:
        folder, names = todo.pop(), []
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and is_run_folder(entry.path):
                    names.append(entry.name)
                elif entry.is_dir(follow_symlinks=False):
                    todo.append(entry.path)
                elif entry.name.endswith(fmt.SUFFIX) and entry.is_file(follow_symlinks=False):
                    names.append(entry.name)
        yield folder, names


def natural_key(text: str) -> tuple:
    """``step_9`` before ``step_60``: digits compare as numbers."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part)


def read_run(path: str) -> RunFacts:
    """The run at ``path`` from its summary sidecar, header frame and footer (no other frame is read)."""
    if os.path.isdir(path):
        return _read_ranks(path)
    facts = RunFacts(path)
    try:
        peek = ondisk.peek_path(path)
    except (CorruptLogError, OSError) as exc:
        facts.size = _size(path)
        if isinstance(exc, CorruptLogError) and ondisk.start_cut(path):
            facts.status, facts.reason = "incomplete", fmt.START_CUT
        else:
            facts.damage(str(exc) if isinstance(exc, CorruptLogError) else f"cannot read: {exc.strerror or exc}")
    else:
        facts.size, facts.header, facts.footer = peek.size, peek.header, peek.footer
        if facts.footer is None:
            facts.status = "incomplete"
            facts.reason = "no footer: the run was not closed (writer killed, or still writing)"
        elif not peek.complete:
            facts.status, facts.reason = "incomplete", str(facts.footer.get("reason") or "footer marked incomplete")
    _read_sidecars(facts, ondisk.summary_path(path))
    return facts


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _read_ranks(folder: str) -> RunFacts:
    """A job's run folder as one run: rank 0's header and footer, every shard's size, complete only when every
    rank's shard is there and complete (the reason names the ranks that are not: the missing ones as ranges);
    damaged when its manifest is (it may also have been replaced since the folder was listed). Only the shards
    in the folder are read, whatever world size the manifest claims."""
    found, facts = ondisk.run_folder(folder), RunFacts(folder)
    if found is None or found.manifest is None:
        facts.damage(found.problem if found is not None else f"no readable {ondisk.MANIFEST}")
        return facts
    shards = {rank: read_run(os.path.join(folder, name)) for rank, name in sorted(found.shards.items())}
    if 0 in shards:
        facts.header, facts.footer, facts.summary = shards[0].header, shards[0].footer, shards[0].summary
    facts.size = sum(shard.size or 0 for shard in shards.values())
    missing = found.missing()
    reasons = [f"rank {rank}: {shard.reason}" for rank, shard in shards.items() if shard.status != "complete"]
    if missing or reasons:
        facts.status = "damaged" if any(s.status == "damaged" for s in shards.values()) else "incomplete"
        facts.reason = "; ".join(([missing] if missing else []) + reasons)
    return facts


def _read_sidecars(facts: RunFacts, summary: str) -> None:
    """The summary beside the log, and the probe's run metadata in it or in the header frame: a sidecar that is
    not what asynclog writes makes the run damaged, naming the file and why, and is not used."""
    try:
        found = ondisk.read_summary(summary)
    except (OSError, ondisk.SidecarError) as exc:
        why = f"{os.path.basename(summary)}: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
        found = None
        facts.problems.append(f"summary {why}")
        facts.damage(f"summary {why}")
    facts.summary = None if found is None else found.raw
    if isinstance(_get(facts.header, "metadata", "run_metadata"), dict):
        try:
            ondisk.checked(facts.header["metadata"]["run_metadata"], ondisk.RunMetadata, "the header's run_metadata")
        except ondisk.SidecarError as exc:
            facts.damage(str(exc))
            facts.header = {**facts.header, "metadata": {**facts.header["metadata"], "run_metadata": {}}}


# --- one row per run -----------------------------------------------------------------------------------------
def row(facts: RunFacts) -> dict:
    """The run as one flat row of ``COLUMNS``: numbers are numbers (or None), the rest text (or None)."""
    s, meta = facts.summary or {}, facts.metadata
    date, time_ = _when(meta, facts.header)
    values = {
        "path": facts.path, "date": date, "time": time_, "checkpoint": _checkpoint(facts, meta),
        "level": s.get("level") or _get(facts.header, "metadata", "detailed_logging", "level")
        or facts.header.get("level"),
        "status": facts.status, "reason": facts.reason, "size": facts.size,
        **result_values(s),
        "logging_fraction": _get(s, "logging_cost", "fraction_of_run"),
        "dropped": dropped(facts.stats) if facts.stats else None, "config_hash": meta.get("config_hash"),
    }
    return {k: (_number(v) if k in NUMBERS else _text(v)) for k, v in values.items()}


def _first(*values):
    return next((v for v in values if v is not None), None)


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _text(value):
    return None if value is None else str(value)


def _when(meta: dict, header: dict) -> tuple[str | None, str | None]:
    """Local date and time the run started: the probe's ``local_time``, else the header's ``created``."""
    local = meta.get("local_time")
    if isinstance(local, str) and "T" in local:
        date, _, time_ = local.partition("T")
        return date, time_
    created = header.get("created")
    if isinstance(created, (int, float)) and not isinstance(created, bool):
        try:
            stamp = datetime.fromtimestamp(created)
        except (OverflowError, ValueError, OSError):  # NaN, or past the dates the platform holds: a crafted file
            return None, None
        return stamp.strftime("%Y-%m-%d"), stamp.strftime("%H:%M:%S")
    return None, None


def _checkpoint(facts: RunFacts, meta: dict) -> str:
    """The run's checkpoint label: the name DetailedLogger recorded (the one its files carry), else named from
    its recorded checkpoint path by ``auto`` (runs written before names were recorded, whose files say
    ``model`` where the path says ``step_60/model``), else the run's name. Nothing from the file is run as a
    pattern: a log may come from anyone."""
    if isinstance(meta.get("checkpoint_name"), str):
        return sanitize_name(meta["checkpoint_name"])
    if isinstance(meta.get("checkpoint_path"), str):
        return checkpoint_name(meta["checkpoint_path"])
    name = facts.header.get("name")
    return name if isinstance(name, str) else os.path.basename(facts.path).removesuffix(fmt.SUFFIX)


def dropped(stats: dict) -> int:
    """Records, tensors and chunks the run dropped under the ``drop`` queue policy."""
    return sum(v for k, v in stats.items() if k.startswith("dropped_") and isinstance(v, int))


def scan(directory: str | os.PathLike, as_frame: bool = True, index: bool = True):
    """One row per run below ``directory`` (see ``COLUMNS``; ``asynclog sweep`` prints the same table).

    A pandas DataFrame (an ImportError naming the extra when pandas is missing, as every pandas view says);
    ``as_frame=False`` gives a list of dicts, without pandas. Paths are ``directory`` joined with the run's place.
    Unchanged runs come from each folder's index (``asynclog/index.py``); ``index=False`` reads every run.
    """
    if not os.path.isdir(directory):
        raise NotADirectoryError(f"{os.fspath(directory)!r} is not a directory")
    rows = rows_below(directory, index)
    if not as_frame:
        return rows
    return need("pandas", "pandas").DataFrame(rows, columns=list(COLUMNS))


# --- many runs, through each folder's index --------------------------------------------------------------------
# A row but its path, as the index keeps it: msgspec checks every column's type when the index is read.
_KEPT = tuple(c for c in COLUMNS if c != "path")
_KEPT_ROW = tuple[tuple((int | float | None) if c in NUMBERS else (str | None) for c in _KEPT)]
# Bump ROWS when row() changes what it makes of a run; dates of plain runs are in the local time zone.
_ROWS = 2  # 2: the checkpoint is its recorded name, or auto's (step_60/model is step_60, not model)
_SCHEMA = f"rows/{_ROWS} asynclog {__version__} {','.join(COLUMNS)} tz {os.environ.get('TZ')} {time.tzname}"


def rows_below(directory: str | os.PathLike, use_index: bool = True) -> list[dict]:
    """``row(read_run(path))`` for every path of ``find_logs(directory)``, in that order; a run whose files
    have not changed since the last time comes from its folder's index instead (unless ``use_index`` is
    False or ``ASYNCLOG_NO_INDEX`` is set)."""
    use_index, rows = index.enabled(use_index), []
    for folder, names in _walk(directory):
        if not names:
            continue  # no runs here: no index to open
        if use_index:
            rows += _folder_rows(folder, names)
        else:
            rows += [row(read_run(os.path.join(folder, name))) for name in names]
    return sorted(rows, key=lambda r: natural_key(r["path"]))


def _folder_rows(folder: str, names: list[str]) -> list[dict]:
    kept = index.FolderIndex(folder, _SCHEMA, _KEPT_ROW)
    rows = [_kept_row(kept, folder, name) for name in names]
    kept.save()
    return rows


def _kept_row(kept: index.FolderIndex, folder: str, name: str) -> dict:
    path = os.path.join(folder, name)
    stamp = index.stamp(folder, run_sources(path, name))
    values = kept.get(name, stamp)
    if values is None:
        fresh = row(read_run(path))
        values = tuple(fresh[c] for c in _KEPT)
        kept.put(name, stamp, values)
    return {"path": path, **dict(zip(_KEPT, values))}


# --- warnings for one run ------------------------------------------------------------------------------------
def warnings_for(facts: RunFacts, min_ess: float | None = None, min_ess_fraction: float = 0.1) -> list[str]:
    """What a person should know before trusting the run's numbers, one sentence each."""
    found = []
    if facts.status == "damaged":
        found.append(f"damaged: {facts.reason} (`asynclog verify {facts.path}` checks every frame)")
    elif facts.status == "incomplete":
        found.append(f"incomplete: {facts.reason}")
    if facts.summary is None and _get(facts.header, "metadata", "layout"):
        found.append("no summary sidecar: results are in the log (`asynclog cat`)")
    s = facts.summary or {}
    found += _ess_warning(s, min_ess, min_ess_fraction)
    for section in ("core_results", "ground_truth", "batch_statistics"):
        if s.get(section) is None:
            continue  # not logged (or no summary at all): nothing there is NaN
        for where in _not_finite(s[section], section):
            found.append(f"{where} is NaN or infinite (null in the summary)")
    lost = dropped(facts.stats)
    if lost:
        parts = ", ".join(f"{facts.stats.get('dropped_' + k, 0)} {k}" for k in ("records", "tensors", "chunks"))
        found.append(f"dropped {parts} (queue policy 'drop': the queue was full)")
    return found


def logged_problems(path: str, limit: int = 20) -> list[str]:
    """The probe's own warnings and errors, sent into the run by ``asynclog.LoggingHandler`` (the first ``limit``;
    of a run folder, every rank's in time order, each after its rank).

    This reads the run's record frames (``show`` looks at one run; ``ls`` and ``sweep`` do not do this)."""
    from asynclog._bridge import EVENT
    from asynclog._shards import open_log

    found = []
    try:
        with open_log(path) as log, warnings_module.catch_warnings():
            warnings_module.simplefilter("ignore")  # a log without any `log` record is not a mistake here
            for record in log.events(name=EVENT):
                data = record.get("data") or {}
                if isinstance(data.get("levelno"), int) and data["levelno"] >= logging.WARNING:
                    rank = f"rank {record['rank']}: " if record.get("rank") is not None else ""
                    found.append(f"{rank}logged {data.get('level')} from {data.get('logger')}: {data.get('message')}")
                    if len(found) == limit:
                        break
    except (OSError, CorruptLogError):
        pass  # the status line already says the file is unreadable or damaged
    return found


_MOST_SEQUENCES = 1 << 53  # a float holds every integer up to here


def _ess_warning(summary: dict, min_ess: float | None, fraction: float) -> list[str]:
    ess = _number(_get(summary, "ground_truth", "diagnostics", "ESS"))
    if ess is None:
        return []
    if min_ess is not None:
        floor, how = min_ess, f"--min-ess {min_ess:g}"
    else:
        n = _number(_first(_get(summary, "batch_statistics", "E_batch", "num_sequences"),
                           _get(summary, "core_results", "B_E")))
        if not n or abs(n) > _MOST_SEQUENCES:  # an integer past any float is no batch size
            return []
        floor, how = fraction * n, f"{fraction:g} of the {n} E-batch sequences; --min-ess-fraction"
    return [f"ESS {ess:.4g} is below {floor:.4g} ({how})"] if ess < floor else []


def _not_finite(value, where: str) -> list[str]:
    """Places in a summary section holding null or a non-finite number (NaN and inf are null in JSON)."""
    if isinstance(value, dict):
        return [w for k, v in value.items() for w in _not_finite(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [w for i, v in enumerate(value) for w in _not_finite(v, f"{where}[{i}]")]
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return [where]
    return []


def printable(text: str) -> str:
    """``text`` as ``ls`` and ``sweep`` print it, in every format: a file name's bytes that are not UTF-8
    (Python holds them as surrogate escapes) each shown as ``\\xNN``, as Python's ``backslashreplace`` writes
    them (``caf\\xe9.alog``); any other lone surrogate as ``\\udNNN``. Valid text is unchanged."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def sort_rows(rows: list[dict], key: str, reverse: bool = False) -> list[dict]:
    """Rows ordered by ``key`` (text in natural order); rows without a value come last either way."""
    present = [r for r in rows if r[key] is not None]
    missing = [r for r in rows if r[key] is None]
    order = (lambda r: r[key]) if key in NUMBERS else (lambda r: natural_key(r[key]))
    return sorted(present, key=order, reverse=reverse) + missing


def describe(facts: RunFacts, warnings: list[str]) -> str:
    """The text ``asynclog show`` prints: the run, its results, timing, diagnostics, cost and warnings."""
    s = facts.summary or {}
    truth = dict(s.get("ground_truth") or {})
    diagnostics = truth.pop("diagnostics", None)
    sections = [_about(facts), _section("core results", s.get("core_results")),
                _section("timing (seconds)", s.get("timing")), _section("ground truth", truth),
                _section("importance sampling diagnostics", diagnostics), _batches(s.get("batch_statistics")),
                _cost(facts), "\n".join(["warnings", *(f"  ! {w}" for w in warnings)]) if warnings else "warnings: none"]
    return "\n\n".join(part for part in sections if part)


def _about(facts: RunFacts) -> str:
    r, meta = row(facts), facts.metadata
    env = meta.get("environment") or {}
    status = r["status"] + (f" ({r['reason']})" if r["reason"] else "")
    path = meta.get("checkpoint_path")
    checkpoint = f"{r['checkpoint']} ({path})" if path else r["checkpoint"]
    lines = [("run", facts.path), ("status", status), ("checkpoint", checkpoint),
             ("level", r["level"]), ("started", " ".join(v for v in (r["date"], r["time"]) if v)),
             ("size", human_size(facts.size)), ("git commit", meta.get("git_commit")),
             ("config hash", meta.get("config_hash")), ("command", " ".join(map(str, meta.get("command") or [])) or None),
             ("host", _host(env, facts.header))]
    return _pairs([(k, v) for k, v in lines if v])


def _host(env: dict, header: dict) -> str | None:
    if not env:
        return header.get("host")
    gpu = f"{env.get('gpu_count')} x {env.get('gpu_name')}" if env.get("cuda_available") else "no CUDA"
    named = [env["hostname"]] if env.get("hostname") else []  # runs of the earlier JSON logger kept none
    return ", ".join([*named, f"python {env.get('python_version')}", f"torch {env.get('torch_version')}", gpu])


def _pairs(items: list[tuple[str, Any]], indent: str = "") -> str:
    width = max((len(k) for k, _ in items), default=0)
    return "\n".join(f"{indent}{k.ljust(width)}  {cell(v)}" for k, v in items)


def _section(title: str, values) -> str | None:
    if not isinstance(values, dict) or not values:
        return None
    return f"{title}\n" + _pairs([(str(k), _brief(v)) for k, v in values.items()], "  ")


def _brief(value):
    """A value on one line: nested maps and long lists are shortened."""
    if isinstance(value, (dict, list)):
        text = _json.encode(value).decode()
        return text if len(text) <= 80 else text[:77] + "..."
    return value


_BATCH_KEYS = ("num_sequences", "avg_generation_length", "max_generation_length", "avg_advantages", "avg_reward",
               "reward_std")


def _batches(stats) -> str | None:
    if not isinstance(stats, dict) or not stats:
        return None
    keys = [k for k in _BATCH_KEYS if any(isinstance(b, dict) and k in b for b in stats.values())]
    table = [[name, *(_get(b, k) for k in keys)] for name, b in stats.items()]
    return "batch statistics\n" + "\n".join("  " + line for line in render(["batch", *keys], table).splitlines())


def _cost(facts: RunFacts) -> str | None:
    cost, stats = (facts.summary or {}).get("logging_cost") or {}, facts.stats
    if not cost and not stats:
        return None
    items = []
    if cost.get("probe_seconds") is not None:
        share = cost.get("fraction_of_run")
        of_run = f" ({100 * share:.3g}% of the run)" if isinstance(share, (int, float)) else ""
        items.append(("probe time in logging", f"{cost['probe_seconds']:.4g} s{of_run}"))
        opening, closing = cost.get("start_seconds") or 0, cost.get("close_seconds") or 0
        items.append(("opening, closing", f"{opening:.3g} s, {closing:.3g} s"))
    for label, key in (("calls", "calls"), ("records", "records"), ("frames", "frames"),
                       ("producer p50 / p99 (us)", None), ("bytes handed over", "bytes_in"),
                       ("bytes on disk", "bytes_on_disk"), ("compression ratio", "compression_ratio"),
                       ("queue high water", "queue_high_water")):
        if key is None and "producer_p50_us" in stats:
            items.append((label, f"{cell(stats['producer_p50_us'])} / {cell(stats.get('producer_p99_us'))}"))
        elif key in stats:
            items.append((label, stats[key]))
    items.append(("dropped", dropped(stats) or "none"))
    return "logging cost\n" + _pairs(items, "  ")


