"""Packs: each folder of a dataset's tables in a few Parquet files, however many runs it holds.

Engines pay per file (DuckDB, Spark and pyarrow advise files of 100 MB and more): a dataset of 10,000 small runs
written one file per run per table reads slower than the logs. So an export writes the rows of each run it adds
or changes to a staging folder beside the tables (``_asynclog_staging/``, which no engine's read of a table
reaches), and then ``Merge`` brings each folder of a table it touched (``table=tokens/checkpoint=c/rank=r``, or
``table=runs``) to a few files:

- a file holds the rows of the runs its Parquet metadata lists (``asynclog.runs``), each run's rows together; a
  file without the list is one run's, ``part-<run>.parquet``;
- a file under ``SMALL_BYTES`` is small; a folder's staged runs, its small files, and any file holding rows of a
  run that left it or is staged again are written into packs of up to ``PACK_BYTES`` (``part-<random>.parquet``),
  taking only the rows of the runs the dataset's state still places in each file: a run's rows are never in two
  files the state names;
- a run staged into a folder that has no other small file is renamed into place, not written again;
- runs whose columns' types do not unify (a number in one, text in another) go to packs of their own.

A pack appears by one rename; the files it replaces go only after the state naming the pack is saved (``commit``).
So the files the state names hold each run's rows once at every moment, and a kill at any point leaves either
the old files or the new ones named; the next export removes what no run names.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable
from typing import NamedTuple

from asynclog._files import folders_to_sync, fsync_folders, makedirs, replacing
from asynclog._tables import need

__all__ = ["Merge", "staged_file", "STAGING", "PACK_BYTES", "SMALL_BYTES", "ROW_GROUP_ROWS"]

STAGING = "_asynclog_staging"  # beside the tables: no read of a table's folder reaches it
RUNS_KEY = b"asynclog.runs"
PACK_BYTES = 128 << 20  # engines' advice is 100 MB and more
SMALL_BYTES = PACK_BYTES // 2  # a file this big is left as it is, unless a run leaves it
ROW_GROUP_ROWS = 1 << 17  # a staged run of a few thousand rows is one tiny row group: gather them


class Source(NamedTuple):
    """One input of a pack: a Parquet file, and the runs whose rows to take (None: all of them)."""
    path: str
    keep: frozenset | None
    runs: frozenset
    size: int


def staged_file(path: str):
    """A file of the staging folder, new or emptied, open for writing; never through a link. Not fsynced: the
    merge fsyncs what it puts in place, and the next export removes the staging folder whatever it holds."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    return os.fdopen(os.open(path, flags, 0o644), "wb")


def held(path: str, named_by: set[str]) -> set[str]:
    """The runs whose rows the file holds: its metadata's list, or the run its name carries."""
    name = os.path.basename(path).removeprefix("part-").removesuffix(".parquet")
    if named_by == {name}:
        return {name}  # a run's own file: no footer to read
    metadata = need("pyarrow.parquet", "export").read_schema(path).metadata or {}
    return set(json.loads(metadata[RUNS_KEY])) if RUNS_KEY in metadata else {name}


def _schema_of(path: str):
    return need("pyarrow.parquet", "export").read_schema(path).remove_metadata()


def _unified(schemas: list):
    """One schema for the files, as pyarrow promotes types (int64 and double as double); None when a column is a
    number in one and text in another."""
    pa = need("pyarrow", "export")
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def groups(sources: list[Source]) -> list[list[Source]]:
    """The sources in packs of up to ``PACK_BYTES`` (a bigger source alone), each of schemas that unify."""
    packs: list[tuple[object, int, list[Source]]] = []
    for source in sources:
        schema = _schema_of(source.path)
        for k, (have, size, members) in enumerate(packs):
            both = _unified([have, schema]) if size + source.size <= PACK_BYTES else None
            if both is not None:
                packs[k] = (both, size + source.size, members + [source])
                break
        else:
            packs.append((schema, source.size, [source]))
    return [members for _, _, members in packs]


def _dictionary_columns(paths: list[str], sample: int = 16) -> list[str]:
    """The columns the first inputs wrote with a dictionary: their choice stands (dataset._dictionary_columns says
    why), and reading every input's footer for it would cost a pack of 10,000 runs seconds."""
    pq = need("pyarrow.parquet", "export")
    found = set()
    for path in paths[:sample]:
        metadata = pq.read_metadata(path)
        if metadata.num_row_groups:
            group = metadata.row_group(0)
            found |= {group.column(i).path_in_schema for i in range(group.num_columns)
                      if any("DICTIONARY" in e for e in group.column(i).encodings)}
    return sorted(found)


def _fit(batch, schema):
    """``batch`` with ``schema``'s columns: cast (types unify, so a cast holds), and columns it lacks as nulls."""
    pa = need("pyarrow", "export")
    names = batch.schema.names
    return pa.RecordBatch.from_arrays([batch.column(f.name).cast(f.type) if f.name in names
                                       else pa.nulls(batch.num_rows, f.type) for f in schema], schema=schema)


def _batches(source: Source):
    """The source's kept rows; its file open only while they are read (a pack may take thousands of files)."""
    pa, pc, pq = need("pyarrow", "export"), need("pyarrow.compute", "export"), need("pyarrow.parquet", "export")
    wanted = None if source.keep is None else pa.array(sorted(source.keep), pa.string())
    with pq.ParquetFile(source.path) as parquet:
        for batch in parquet.iter_batches(batch_size=ROW_GROUP_ROWS):
            yield batch if wanted is None else batch.filter(pc.is_in(batch.column("run"), value_set=wanted))


def write_pack(path: str, sources: list[Source]) -> list[str]:
    """Write the sources' kept rows into one Parquet file at ``path``, through a temporary file renamed once whole,
    in row groups of about ``ROW_GROUP_ROWS``; return the runs it holds (also its metadata's list)."""
    pa, pq = need("pyarrow", "export"), need("pyarrow.parquet", "export")
    runs = sorted(set().union(*(s.runs if s.keep is None else s.keep for s in sources)))
    paths = [s.path for s in sources]
    schema = _unified([_schema_of(p) for p in paths])
    makedirs(os.path.dirname(path))
    with replacing(path) as out, pq.ParquetWriter(out, schema.with_metadata({RUNS_KEY: json.dumps(runs)}),
                                                  use_dictionary=_dictionary_columns(paths)) as writer:
        gathered, rows = [], 0
        for source in sources:
            for batch in _batches(source):
                gathered.append(_fit(batch, schema))
                rows += batch.num_rows
                if rows >= ROW_GROUP_ROWS:
                    writer.write_table(pa.Table.from_batches(gathered, schema), row_group_size=ROW_GROUP_ROWS)
                    gathered, rows = [], 0
        if rows:
            writer.write_table(pa.Table.from_batches(gathered, schema), row_group_size=ROW_GROUP_ROWS)
    return runs


def _put(staged: str, path: str) -> None:
    """Rename a staged file into the tables, durably: over the run's own old file, if it had one, in one step."""
    with open(staged, "rb") as f:
        os.fsync(f.fileno())
    makedirs(os.path.dirname(path))
    os.replace(staged, path)
    fsync_folders(folders_to_sync(path))


class Merge:
    """Bring the table folders an export touched to a few files (the module docstring says how).

    ``runs`` is the state's: each run's entry names its files (``parts``, relative to ``out``); ``staged`` is, for
    each folder, the (run, staged file) pairs of the runs written this export. ``commit`` saves the state; each
    file replaced is removed after it, once no run names it. ``written`` holds the files put in place.
    """

    def __init__(self, out: str, runs: dict, staged: dict[str, list[tuple[str, str]]], commit: Callable[[], None]):
        self.out, self.runs, self.staged, self.commit = out, runs, staged, commit
        self.named: dict[str, set[str]] = defaultdict(set)  # each file the state names, and the runs naming it
        for run, entry in runs.items():
            for part in entry["parts"]:
                self.named[part].add(run)
        self.held = {part: held(self._at(part), by) for part, by in self.named.items()}
        self.replaced: list[str] = []
        self.written: list[str] = []

    def _at(self, part: str) -> str:
        return os.path.join(self.out, part)

    def _wanted(self, part: str, restaged: set[str]) -> set[str]:
        return self.named[part] - restaged

    def run(self, every: float, clock: Callable[[], float]) -> None:
        """Merge each folder that needs it, folders that only lose rows first (a run whose checkpoint changed
        is then briefly absent, never twice); commit at most every ``every`` seconds and at the end."""
        folders: dict[str, list[str]] = defaultdict(list)
        for part in self.named:
            folders[os.path.dirname(part)].append(part)
        todo = sorted(set(folders) | set(self.staged), key=lambda f: (f in self.staged, f))
        last = clock()
        for folder in todo:
            self._merge(folder, folders.get(folder, []))
            if self.replaced and clock() - last >= every:
                self._commit()
                last = clock()
        self._commit()

    def _merge(self, folder: str, parts: list[str]) -> None:
        staged = self.staged.get(folder, [])
        restaged = {run for run, _ in staged}
        visible = [Source(self._at(p), self._keep(p, restaged), frozenset(self.held[p]), os.path.getsize(self._at(p)))
                   for p in parts if self._needs(p, restaged)]
        if not staged and all(s.keep is None for s in visible) and len(visible) < 2:
            return  # nothing staged, nothing to drop, at most one small file
        sources = [s for s in visible if s.keep != frozenset()]  # a file none of whose rows stay is only removed
        sources += [Source(path, None, frozenset({run}), os.path.getsize(path)) for run, path in staged]
        changing = [group for group in groups(sources) if len(group) > 1 or group[0].keep is not None
                    or group[0].path not in {s.path for s in visible}]
        replaced = {os.path.relpath(s.path, self.out) for s in visible
                    if s.keep == frozenset() or any(s in group for group in changing)}
        for group in changing:
            self._place(folder, group, replaced)
        self.replaced += sorted(replaced)

    def _needs(self, part: str, restaged: set[str]) -> bool:
        """Whether a file goes into this merge: small, or holding rows of a run that left it or is staged again."""
        return os.path.getsize(self._at(part)) < SMALL_BYTES or bool(self.held[part] - self._wanted(part, restaged))

    def _keep(self, part: str, restaged: set[str]) -> frozenset | None:
        wanted = self._wanted(part, restaged)
        return None if self.held[part] <= wanted else frozenset(self.held[part] & wanted)

    def _place(self, folder: str, group: list[Source], replaced: set[str]) -> None:
        """One file for the group: one staged run renamed into place, or a pack written; each of its runs' entries
        names it in place of the files replaced."""
        if len(group) == 1 and group[0].keep is None and group[0].path.startswith(self._at(STAGING) + os.sep):
            [run] = group[0].runs
            part = os.path.join(folder, f"part-{run}.parquet")
            _put(group[0].path, self._at(part))
            runs = [run]
        else:
            part = os.path.join(folder, f"part-{os.urandom(8).hex()}.parquet")
            runs = write_pack(self._at(part), group)
        self.written.append(self._at(part))
        for run in runs:
            entry = self.runs[run]
            entry["parts"] = [p for p in entry["parts"] if p not in replaced and p != part] + [part]

    def _commit(self) -> None:
        """Save the state; then remove each file replaced that no run names any more."""
        self.commit()
        named = {part for entry in self.runs.values() for part in entry["parts"]}
        for part in self.replaced:
            if part not in named:
                try:
                    os.unlink(self._at(part))
                except FileNotFoundError:
                    pass
        self.replaced = []
