"""Where a probe's logs go: run folders and names, the summary and config sidecars, the README, retention.

The layout the logging plan draws, with asynclog's framed file as the main log::

    <output_directory>/
    ├── README.md                                   what the files are (written once, never overwritten)
    └── <YYYY-MM-DD>/
        ├── entropy_probe_<HH-MM-SS>_<checkpoint>.alog           main log (asynclog format)
        ├── entropy_probe_<HH-MM-SS>_<checkpoint>_summary.json   summary (at finalize; by the writer on a crash)
        └── entropy_probe_<HH-MM-SS>_<checkpoint>_config.yaml    the exact config of the run

Every name built here is one path component inside the day folder: checkpoint names are sanitised and the
result is checked, so no checkpoint path (``../../etc``, ``a/b``, control or bidi characters) can place a
file elsewhere. Retention removes only files that are asynclog logs by their first bytes, with their sidecars.
"""

from __future__ import annotations

import os
import re
import stat
import string
import unicodedata
from datetime import datetime
from typing import NamedTuple

from .errors import ConfigError
from .format import FILE_MAGIC

__all__ = [
    "RunPaths",
    "checkpoint_name",
    "sanitize_name",
    "check_template",
    "run_paths",
    "ensure_readme",
    "is_asynclog_file",
    "prune",
    "SUFFIX",
]

SUFFIX = ".alog"
SUMMARY_SUFFIX = "_summary.json"
CONFIG_SUFFIX = "_config.yaml"
_SIDECARS = (SUMMARY_SUFFIX, CONFIG_SUFFIX, SUMMARY_SUFFIX + ".tmp")
_TEMPLATE_FIELDS = frozenset({"timestamp", "checkpoint_name", "date", "level"})
# What the plan's templates end with, mapped away: the main log is always an .alog file.
_FOREIGN_SUFFIXES = (".json.gz", ".json", ".gz", ".jsonl", SUFFIX)
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_MAX_NAME = 80
_FALLBACK = "checkpoint"


class RunPaths(NamedTuple):
    """The files of one run; all absolute, all inside ``day_dir``."""

    root: str
    day_dir: str
    main: str
    summary: str
    config: str


# --- names -------------------------------------------------------------------------------------------------
def sanitize_name(name: str, fallback: str = _FALLBACK) -> str:
    """One safe file-name component: letters, digits, ``.``, ``_``, ``-``; never empty, never starting with ``.``.

    NFKC first, so look-alikes of ``/`` (fullwidth solidus, ...) turn into ``/`` and are then replaced like
    it. Control characters, bidi marks, NUL and separators become ``_``; runs of ``_`` collapse.
    """
    text = unicodedata.normalize("NFKC", str(name))
    kept = "".join(ch if (ch.isalnum() or ch in "._-") and ch.isprintable() else "_" for ch in text)
    kept = re.sub(r"_+", "_", kept).strip("._-")[:_MAX_NAME].strip("._-")
    return kept or fallback


def checkpoint_name(checkpoint_path: str | os.PathLike | None) -> str:
    """The run's name from its checkpoint: the path's last component (``/ckpt/step_60/`` -> ``step_60``), sanitised."""
    if checkpoint_path is None:
        return _FALLBACK
    text = os.fspath(checkpoint_path).replace("\\", "/").rstrip("/")
    return sanitize_name(text.rsplit("/", 1)[-1])


def check_template(template: str) -> None:
    """A ConfigError naming ``filename_template`` unless it formats with the known fields into one file name."""
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    unknown = fields - _TEMPLATE_FIELDS
    if unknown:
        raise ConfigError(f"config key 'filename_template': unknown field(s) {sorted(unknown)}; "
                          f"use {sorted(_TEMPLATE_FIELDS)}")
    if "/" in template or "\\" in template or not template.strip():
        raise ConfigError("config key 'filename_template' must be a file name, not a path")


def _stem(template: str, values: dict) -> str:
    name = template.format(**values)
    lowered = name.lower()
    for suffix in _FOREIGN_SUFFIXES:
        if lowered.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return sanitize_name(name, fallback="run")


def run_paths(output_directory: str | os.PathLike, template: str, checkpoint_path, level: str,
              now: datetime | None = None) -> RunPaths:
    """Build (and create the day folder of) a new run's paths; a name already taken gets ``-1``, ``-2``, ...

    ``now`` is local time; the day folder is its date and ``{timestamp}`` its ``HH-MM-SS``.
    """
    check_template(template)
    now = now or datetime.now()
    root = os.path.abspath(os.fspath(output_directory))
    day_dir = os.path.join(root, now.strftime("%Y-%m-%d"))
    os.makedirs(day_dir, exist_ok=True)
    values = {"timestamp": now.strftime("%H-%M-%S"), "date": now.strftime("%Y-%m-%d"),
              "checkpoint_name": checkpoint_name(checkpoint_path), "level": level}
    stem = _stem(template, values)
    for n in range(10_000):
        candidate = stem if n == 0 else f"{stem}-{n}"
        paths = RunPaths(root, day_dir, *(os.path.join(day_dir, candidate + s)
                                          for s in (SUFFIX, SUMMARY_SUFFIX, CONFIG_SUFFIX)))
        if not any(os.path.lexists(p) for p in paths[2:]):
            break
    else:
        raise FileExistsError(f"no free name for {stem!r} in {day_dir}")
    for path in paths[2:]:
        # Belt and braces: sanitising already makes this impossible.
        if os.path.dirname(path) != day_dir:
            raise AssertionError(f"{path!r} escapes {day_dir!r}")
    return paths


# --- README ------------------------------------------------------------------------------------------------
_README = """\
# Entropy probe logs (asynclog)

One folder per day; per run three files that share a name:

- `entropy_probe_<HH-MM-SS>_<checkpoint>.alog` - the main log, in asynclog's framed format:
  checksummed frames, zstandard-compressed, readable even if the probe crashed. The format is described
  in asynclog's `docs/FORMAT.md`; what the probe writes at each level in `docs/PROBE.md`.
- `..._summary.json` - the small summary: core results, timing, batch statistics, ground truth, and what
  logging cost (`logging_cost`). `"complete": false` means the probe ended before `finalize_log`.
- `..._config.yaml` - the exact configuration of the run.

Read a log:

    asynclog cat <file>.alog | jq .        # every record as a JSON line
    asynclog verify <file>.alog            # check every checksum

    import asynclog
    log = asynclog.open("<file>.alog")
    log.header["metadata"]; list(log.events(name="core_results")); log.rows("sequences/E_batch")

Old runs beyond `max_files` are removed automatically, asynclog's own files only.
"""


def ensure_readme(root: str) -> str:
    """Write the logs root's README.md unless one is there already (a user may have edited it)."""
    path = os.path.join(root, "README.md")
    if not os.path.lexists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(_README)
        os.replace(tmp, path)
    return path


# --- retention ---------------------------------------------------------------------------------------------
def is_asynclog_file(path: str) -> bool:
    """True for a regular file (not a link) named ``*.alog`` whose first 8 bytes are asynclog's magic."""
    try:
        if not path.endswith(SUFFIX) or not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, "rb") as f:
            return f.read(len(FILE_MAGIC)) == FILE_MAGIC
    except OSError:
        return False


def _runs(root: str) -> list[tuple[float, str]]:
    """Every asynclog log in the day folders under ``root``, as (mtime, path)."""
    found = []
    try:
        days = [d for d in os.listdir(root) if _DAY.match(d)]
    except OSError:
        return found
    for day in days:
        folder = os.path.join(root, day)
        if os.path.islink(folder) or not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if is_asynclog_file(path):
                found.append((os.lstat(path).st_mtime, path))
    return found


def prune(root: str, keep: int, protect: str | None = None) -> list[str]:
    """Remove the oldest asynclog runs under ``root`` beyond the newest ``keep``; return the files removed.

    A run is its ``.alog`` file (recognised by its magic, see ``is_asynclog_file``) plus the sidecars that
    share its stem. Nothing else is touched, ``protect`` (the run being written) never is, and a day folder
    is removed only when that leaves it empty. ``keep <= 0`` keeps everything.
    """
    if keep <= 0:
        return []
    runs = sorted(_runs(root), reverse=True)  # newest first
    removed = []
    for _, path in runs[keep:]:
        if protect is not None and os.path.abspath(path) == os.path.abspath(protect):
            continue
        stem = path[: -len(SUFFIX)]
        for victim in [path, *(stem + s for s in _SIDECARS)]:
            try:
                if os.path.lexists(victim) and not os.path.isdir(victim):
                    os.unlink(victim)
                    removed.append(victim)
            except OSError:
                pass  # another process may be pruning too
        try:
            os.rmdir(os.path.dirname(path))
        except OSError:
            pass  # not empty: other files live there
    return removed
