"""DetailedLogger: the entropy probe's logging plan, written through asynclog.

A probe adopts it by changing one import; the calls are the plan's::

    from asynclog import DetailedLogger
    dl = DetailedLogger(config, logger, tokenizer=tok)      # config: the probe's dict with `detailed_logging:`
    path = dl.log_run_start(checkpoint_path, config)
    dl.log_phase_start("phase0_sampling"); ...; dl.log_phase_end("phase0_sampling")
    dl.log_batch_data("E_batch", E_batch, E_sequences)      # E_sequences: optional, see batchstats.SEQUENCE_FIELDS
    dl.log_importance_sampling_details(S_orig, S_upd, RB_orig, RB_upd)
    dl.log_ground_truth_results(ground_truth)
    dl.finalize_log(results)                                # -> the main log's path

What each level writes, and where, is in docs/PROBE.md. The probe's thread does the small work (reductions
on the device, one host sync per statistic set or row chunk, msgpack encoding); compression and disk
writes happen in asynclog's writer process.

Lifecycle: ``log_run_start`` opens a run and ``finalize_log`` closes it; a logger serves run after run (a
checkpoint sweep). Calls outside an open run, and every call when ``enabled`` is false, return None at
once; a disabled logger never starts the writer. A run left open (an exception leaving ``with logger:``,
``close()``, interpreter exit, a new ``log_run_start``) is closed marked incomplete, and its summary says
why; if the process is killed, the writer writes that summary. Errors from asynclog (bad input, a dead writer) are raised to the caller.
Not thread-safe: call it from the probe's thread.

In a job of several ranks (``torch.distributed`` initialised, or ``rank=``/``world_size=`` given) every rank
makes its own DetailedLogger, and each run is one folder (``layout.rank_run_paths``) holding one shard per
rank: each rank's phases, batch statistics, rows and tensors go to its shard; results the probe has reduced
across ranks already (core results, ground truth, final results) are logged once, by rank 0. The folder's
name must be the same on every rank without a collective (a logger must not deadlock a job whose ranks
diverge): ``run_name``, else a name from the launcher's environment (``ranks.launcher_name``), else, when
``broadcast_name=True``, rank 0's, broadcast once per run, else one for this launch (``ranks.launch_name``:
torchrun's launch folder, or a name rank 0 leaves in the process group's store); else LogInputError says
so. The run's ``run_metadata`` says which (``name_source``).
Batch statistics carry raw aggregates there, so the reader merges the ranks' exactly
(``ShardedLog.batch_statistics``).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
import weakref
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, NamedTuple

import msgspec
import torch
import yaml

from asynclog import __version__
from asynclog import _ranks as ranks
from asynclog._files import atomic_write
from asynclog._records import SMALL_TENSOR_ITEMS
from asynclog._session import start
from asynclog._snapshot import dtype_name
from asynclog.config import Config, DetailedLoggingConfig, level_rank, read_config
from asynclog.errors import LogInputError
from asynclog.probe import layout
from asynclog.probe.batchstats import (BatchView, RowSource, Vocabulary, as_float_tensor, batch_statistics,
                                       sequence_extras)

__all__ = ["DetailedLogger", "DetailedLoggingConfig", "load_settings", "plain", "config_hash"]

_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when present: a config dumps 10x faster
SEQUENCE_CHUNK_ROWS = 256
TOKEN_CHUNK_ROWS = 64
VOCAB_ROW_IDS = 4096  # ids per ``vocab`` row: a row is far below a chunk's room even with long texts
# Token rows store no text per token: the reader looks each token id up in the run's ``vocab`` table,
# which holds the text of every id the run logged, once (docs/PROBE.md).
TOKEN_TEXTS = {"column": "token_texts", "keys": "tokens", "table": "vocab", "key": "token_id", "value": "text"}
CORE_KEYS = ("bars_dot", "deltaH1", "deltaH_true", "learning_rate", "B_E", "B_U", "G", "mb_size_prompts",
             "weighting_mode")
# The staging pool per level when the config does not set ``staging_bytes`` (the core's 256 MiB is sized for
# tensors of hundreds of MiB). Records go through the pipe, so minimal and standard stage nothing; detailed
# and debug stage chunks of 256 sequence or 64 token rows (a few hundred KiB at 150 tokens: a chunk ships early
# at a quarter of the pool, and only a single row larger than that is refused) and raw tensors, in pieces.
PROBE_STAGING_BYTES = {"minimal": 1 << 20, "standard": 1 << 20, "detailed": 16 << 20, "debug": 32 << 20}


def load_settings(config: Mapping | str | os.PathLike | None) -> tuple[DetailedLoggingConfig, Config, dict]:
    """(detailed_logging settings, asynclog engine config, the config as a dict), read by
    ``asynclog.config.read_config`` as every entry point reads a config (a path, a level name or a mapping);
    the pool is ``PROBE_STAGING_BYTES`` of the level unless the config's engine keys set ``staging_bytes``."""
    settings, engine, data = read_config(config)
    if "staging_bytes" not in (data.get("asynclog") or data):  # the engine keys: that section, or a flat mapping
        engine = msgspec.structs.replace(engine, staging_bytes=PROBE_STAGING_BYTES[settings.level])
    return settings, engine, data


class _Keeps(NamedTuple):
    """What a logger writes, from its level and switches."""

    batch_statistics: bool
    ground_truth: bool
    importance_details: bool  # as the user's logger: at detailed and debug, whatever log_sequences says
    sequences: bool
    tokens: bool
    raw_tensors: bool

    @classmethod
    def of(cls, s: DetailedLoggingConfig) -> "_Keeps":
        rank = level_rank(s.level)
        return cls(rank >= 1, rank >= 1, rank >= 2, rank >= 2 and s.log_sequences, rank >= 3 and s.log_tokens,
                   rank >= 3 and s.log_raw_tensors)

    @staticmethod
    def switched_off(s: DetailedLoggingConfig) -> list[str]:
        """What the level includes but a switch turns off, in words."""
        rank, off = level_rank(s.level), []
        for needs, switch, what in ((2, "log_sequences", "per-sequence rows"), (3, "log_tokens", "per-token rows"),
                                    (3, "log_raw_tensors", "raw tensors")):
            if rank >= needs and not getattr(s, switch):
                off.append(f"level {s.level!r} includes {what}, but {switch} is false: none are written")
        return off


class _RunState:
    """What one open run remembers for its summary; small by construction."""

    def __init__(self, paths: layout.RunPaths, start_summary: dict, where: ranks.Placement | None):
        self.paths = paths
        self.where = where  # None for a run of a single process
        self.start_summary = start_summary
        self.started = time.perf_counter()
        self.busy_ns = 0
        self.start_ns = 0  # of busy_ns, opening the run (the first run of a process also starts the writer)
        self.phase_started: dict[str, float] = {}
        self.timing: dict[str, float] = {}
        self.core_results: dict = {}
        self.batch_statistics: dict = {}
        self.ground_truth: dict | None = None
        self.importance_details: dict | None = None
        self.config_G = None  # batch_config.G of the run's config: core_results' G when the results lack it

    @property
    def logs_reduced(self) -> bool:
        """Whether this process logs results the probe reduced across ranks: rank 0 (or the only process)."""
        return self.where is None or self.where.rank == 0


def _logging_call(method):
    """Return None at once outside an open run; count the time spent inside toward ``logging_cost``."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        state = self._state
        if state is None:
            return None
        begin = time.perf_counter_ns()
        try:
            return method(self, *args, **kwargs)
        finally:
            state.busy_ns += time.perf_counter_ns() - begin

    return call


class DetailedLogger:
    """The plan's DetailedLogger; see the module docstring for the lifecycle and docs/PROBE.md for content.

    ``config``: the probe's whole config (a dict, a YAML path, or a level name for the shipped config) holding a
    ``detailed_logging`` section and/or an ``asynclog`` section of engine settings (``asynclog.Config``), read
    as ``asynclog.config.read_config`` says. ``base_logger`` gets one
    info line per run (where the log is), and a warning naming the files the first time retention
    (``max_files``) removes runs; later removals, a line at info level. ``tokenizer`` (anything with
    ``decode(ids)``) turns token ids into text when the batch carries no ``_debug_info`` texts, and gives
    token rows their ``token_texts``: each id decoded once per logger, its text stored once per run
    (``vocab``) and joined to the rows when read.

    In a job of several ranks (see the module docstring): ``rank`` and ``world_size`` (default:
    torch.distributed's, read at each ``log_run_start``), ``run_name`` (the name every rank shares; it takes
    the place of ``{timestamp}``), ``broadcast_name`` (allow one broadcast from rank 0 per run when no name is
    shared otherwise).

    Attributes: ``enabled``, ``level``, ``settings``, ``engine_config``; ``run``, the open asynclog Run (None
    between runs) for anything the plan does not name; ``last_summary``, the summary of the last run closed.
    """

    def __init__(self, config: Mapping | str | os.PathLike | None, base_logger: logging.Logger | None = None,
                 tokenizer: Any = None, *, rank: int | None = None, world_size: int | None = None,
                 run_name: str | None = None, broadcast_name: bool = False):
        self.settings, self.engine_config, self._config = load_settings(config)
        self.enabled: bool = self.settings.enabled
        self.level: str = self.settings.level
        self.keeps = _Keeps.of(self.settings)
        self.logger = base_logger or logging.getLogger("asynclog.probe")
        self._vocabulary = Vocabulary(tokenizer)  # each id decoded once per logger, stored once per run
        self.tokenizer = tokenizer
        self._warned: set[tuple[str, str]] = set()
        self.run = None
        self._state: _RunState | None = None
        self.last_summary: dict | None = None
        self.rank, self.world_size, self.broadcast_name = rank, world_size, broadcast_name
        self.run_name = run_name or self.settings.run_name
        self._occurrences: dict[tuple[str, str], int] = {}  # a job's runs per (name, checkpoint), alike on every rank
        self._retention_said = False  # whether retention's first removal has been warned of
        if self.enabled:
            for line in _Keeps.switched_off(self.settings):
                self.logger.warning("asynclog: %s", line)

    @property
    def tokenizer(self) -> Any:
        """Turns token ids into text (anything with ``decode(ids)``); may be set at any time before
        ``log_batch_data``, as a probe that loads its tokenizer after building the logger does."""
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._vocabulary.use(tokenizer)

    def _warn_once(self, where: str, notes: Mapping[str, str]) -> None:
        """Warn through the probe's logger, once per logger for each batch type and kind of note."""
        for kind, text in notes.items():
            if (where, kind) not in self._warned:
                self._warned.add((where, kind))
                self.logger.warning("asynclog: %s: %s", where, text)

    # --- run lifecycle ------------------------------------------------------------------------------------
    def log_run_start(self, checkpoint_path: str | os.PathLike | None, config: Mapping | None = None,
                      run_name: str | None = None) -> str | None:
        """Open a run for ``checkpoint_path``: day folder, config sidecar, README, retention. Returns the log path
        (in a job of several ranks, the run folder, the same on every rank).

        ``config`` (default: the constructor's) is what the config sidecar holds and ``config_hash`` hashes.
        ``run_name`` (default: the constructor's) takes the place of ``{timestamp}`` in the file name.
        """
        if not self.enabled:
            return None
        if self._state is not None:
            self._close(False, "log_run_start was called again before finalize_log")
        begin = time.perf_counter_ns()
        config = self._config if config is None else config
        s = self.settings
        where = ranks.placement(self.rank, self.world_size)
        paths, name_source = self._run_paths(checkpoint_path, where, run_name or self.run_name)
        layout.ensure_readme(paths.root)
        metadata = {**run_metadata(checkpoint_path, config,
                                   layout.checkpoint_name(checkpoint_path, s.checkpoint_name)),
                    "name_source": name_source}
        start_summary = {"log_path": paths.main, "summary_path": paths.summary, "config_path": paths.config,
                         "level": s.level, "run_metadata": metadata}
        if where is not None:
            start_summary.update(rank=where.rank, world_size=where.world_size)
        header = {"run_metadata": metadata, "detailed_logging": msgspec.structs.asdict(s),
                  "probe_config": plain(config), "layout": layout.marker(s.filename_template, paths)}
        self.run = self._start(paths, where, header, start_summary)
        self._state = _RunState(paths, start_summary, where)
        self._state.config_G = _config_G(config)
        self._vocabulary.start_run()
        _OPEN.add(self)
        if self._state.logs_reduced:  # one config sidecar and one pruner per run, however many ranks
            atomic_write(paths.config, yaml.dump(plain(config), Dumper=_YAML_DUMPER, sort_keys=False,
                                                 allow_unicode=True))
            removed = layout.prune(paths.root, s.max_files, s.filename_template, protect=paths.main)
            if removed:
                self._say_removed(paths.root, removed)
        self.logger.info("asynclog: detailed log %s (level %s)", paths.main, s.level)
        self._state.start_ns = self._state.busy_ns = time.perf_counter_ns() - begin
        return paths.main

    def _say_removed(self, root: str, removed: list[str]) -> None:
        """Tell the probe's logger what retention removed: a warning the first time in this logger's life (the
        probe's own logger never deleted runs; ``max_files`` now does), then one line at info level."""
        n, most = self.settings.max_files, 12  # files named; a first prune of a long-kept folder may remove many
        files = ", ".join(os.path.relpath(path, root) for path in removed[:most])
        files += f" and {len(removed) - most} more" if len(removed) > most else ""
        if self._retention_said:
            self.logger.info("asynclog: max_files: %d removed %s", n, files)
            return
        self._retention_said = True
        self.logger.warning("asynclog: max_files: %d keeps the newest %d runs under %s; removed %d file(s) of older "
                            "runs: %s (max_files: 0 keeps every run)", n, n, root, len(removed), files)

    def _run_paths(self, checkpoint_path, where: ranks.Placement | None,
                   name: str | None) -> tuple[layout.RunPaths, str]:
        """A single process's run files; or this rank's in the run folder all ranks share (see the class); and
        how the run was named (``ranks.SharedName.source``, or "clock" for a single process's time)."""
        s = self.settings
        rule = s.checkpoint_name
        if where is None:
            return (layout.run_paths(s.output_directory, s.filename_template, checkpoint_path, s.level, name=name,
                                     checkpoint_rule=rule), "run_name" if name else "clock")
        shared = ranks.SharedName(name, "run_name") if name else ranks.launcher_name()
        if shared is None and self.broadcast_name:
            return self._broadcast_paths(checkpoint_path, where), "broadcast_name"
        shared = shared or ranks.launch_name(where)
        if shared is None:
            raise ranks.no_shared_name(where)
        key = (shared.name, layout.checkpoint_name(checkpoint_path, rule))
        # Counted when attempted, started or not: every rank attempts the same runs in the same order, so
        # the n-th attempt names the same folder on every rank even where one rank's start failed.
        occurrence = self._occurrences[key] = self._occurrences.get(key, -1) + 1
        return (layout.rank_run_paths(s.output_directory, s.filename_template, checkpoint_path, s.level,
                                      shared.name, where.rank, occurrence, checkpoint_rule=rule), shared.source)

    def _broadcast_paths(self, checkpoint_path, where: ranks.Placement) -> layout.RunPaths:
        """Rank 0 names and creates the run folder from its clock and tells the others (``broadcast_name``)."""
        s = self.settings
        folder = ranks.broadcast_from_rank0(
            lambda: layout.new_rank_run_folder(s.output_directory, s.filename_template, checkpoint_path, s.level,
                                               checkpoint_rule=s.checkpoint_name),
            "create the run folder")
        return layout.rank_run_paths_in(s.output_directory, folder, where.rank)

    def _start(self, paths: layout.RunPaths, where: ranks.Placement | None, header: dict, start_summary: dict):
        summary = {"summary_path": paths.summary, "summary": start_summary}
        if where is None:  # run_paths reserved paths.main (an empty file), so the run takes it over
            return start(path=paths.main, config=self.engine_config, metadata=header, overwrite=True, summary=summary)
        try:
            return start(paths.day_dir, os.path.basename(paths.main), config=self.engine_config, metadata=header,
                         summary=summary, rank=where.rank, world_size=where.world_size)
        except FileExistsError:
            raise LogInputError(
                f"{paths.main} holds rank {where.rank}'s log already: an earlier run had this name (the same "
                "run_name or launcher job id again, or a restart its environment does not tell apart). Give "
                "this run a run_name of its own.") from None

    def finalize_log(self, final_results: Mapping | None = None) -> str | None:
        """Log the final results, close the run, write the summary; return the main log's path."""
        if self._state is None:
            return None
        return self._close(True, None, final_results or {})

    def close(self) -> None:
        """Close a run that was never finalized, marked incomplete. Safe to call any time."""
        if self._state is not None:
            self._close(False, "closed before finalize_log")

    def __enter__(self) -> "DetailedLogger":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._state is not None:
            reason = "closed before finalize_log" if exc_type is None else f"closed by {exc_type.__name__}: {exc}"
            self._close(False, reason)

    # --- the plan's quantities ----------------------------------------------------------------------------
    @_logging_call
    def log_phase_start(self, phase_name: str) -> None:
        """Mark a phase's start (an event, flushed, so a crash inside the phase shows where it happened)."""
        self._state.phase_started[phase_name] = time.perf_counter()
        self.run.event("phase_start", phase=phase_name)
        self.run.flush()

    @_logging_call
    def log_phase_end(self, phase_name: str, results: Any = None) -> None:
        """Mark a phase's end: ``phase_end`` {phase, duration, results}; the duration goes to ``timing``."""
        started = self._state.phase_started.pop(phase_name, None)
        duration = None if started is None else time.perf_counter() - started
        if duration is not None:
            timing = self._state.timing
            timing[phase_name] = timing.get(phase_name, 0.0) + duration
        self.run.event("phase_end", phase=phase_name, duration=duration, results=plain(results or {}))
        self.run.flush()

    @_logging_call
    def log_core_results(self, results: Mapping) -> None:
        """The plan's core results (bars_dot, deltaH1, ...): every level. Also kept for the summary."""
        if not self._state.logs_reduced:
            return
        values = plain(results)
        self._state.core_results.update(values)
        self.run.event("core_results", **values)
        self.run.flush()

    @_logging_call
    def log_batch_data(self, batch_type: str, batch: Mapping, sequences: Any = None) -> None:
        """Batch statistics (standard), sequence rows (detailed), token rows and raw tensors (debug).

        ``batch``: the probe's batch dict (see ``asynclog.probe.batchstats``). ``sequences``: optional
        per-sequence data, a dict with ``batchstats.SEQUENCE_FIELDS`` keys or the probe's own result object.
        """
        keeps, run = self.keeps, self.run
        if not (keeps.batch_statistics or keeps.sequences or keeps.tokens or keeps.raw_tensors):
            return
        if not isinstance(batch_type, str) or not batch_type:
            raise LogInputError(f"batch_type must be a non-empty str, not {batch_type!r}")
        extras = sequence_extras(sequences, batch_type)
        view = BatchView(batch, batch_type, extras)
        self._warn_once(batch_type, view.notes)
        if keeps.batch_statistics:
            stats = batch_statistics(view, aggregates=self._state.where is not None)  # merged at read time
            self._state.batch_statistics[batch_type] = {k: v for k, v in stats.items() if k != "aggregates"}
            run.event("batch_statistics", batch=batch_type, **stats)
        if keeps.sequences or keeps.tokens:
            rows = RowSource(view, extras, self.tokenizer)
            if keeps.sequences:
                self._write_rows(f"sequences/{batch_type}", view.N, rows.sequence_columns, SEQUENCE_CHUNK_ROWS)
            if keeps.tokens:
                texts = self.tokenizer is not None
                if texts:
                    self._write_vocabulary(rows.token_ids())  # first: a log cut after it has every row's texts
                self._write_rows(f"tokens/{batch_type}", view.N, rows.token_columns, TOKEN_CHUNK_ROWS,
                                 [TOKEN_TEXTS] if texts else None)
        if keeps.raw_tensors:  # as the user's logger: every tensor of the batch, prompts included
            for key, value in batch.items():
                if isinstance(value, torch.Tensor):
                    run.tensor(f"{batch_type}/{key}", value)
        run.flush()

    @_logging_call
    def log_importance_sampling_details(self, S_orig, S_upd, RB_orig, RB_upd, batch_type: str = "E_batch") -> None:
        """Per-sequence S and RB before and after the update, as the user's logger keeps them.

        ``importance_sampling_details`` (detailed and debug): mean, std, min, max of ``logw`` = S_upd - S_orig,
        of the weights exp(logw - max logw) and of S and RB. Rows ``importance/<batch>`` (with log_sequences)
        and tensors (debug, log_raw_tensors). Arguments are [B] or [B, 1] tensors (or lists).
        """
        keeps = self.keeps
        if not (keeps.importance_details or keeps.raw_tensors):
            return
        device = S_orig.device if isinstance(S_orig, torch.Tensor) else torch.device("cpu")
        given = {"S_orig": S_orig, "S_upd": S_upd, "RB_orig": RB_orig, "RB_upd": RB_upd}
        flat = {k: as_float_tensor(v, device, k).to(device).double().reshape(-1) for k, v in given.items()}
        sizes = {t.numel() for t in flat.values()}
        if len(sizes) != 1 or 0 in sizes:
            raise LogInputError(f"S_orig, S_upd, RB_orig, RB_upd must be of one size, not empty: "
                                f"{ {k: t.numel() for k, t in flat.items()} }")
        logw = flat["logw"] = flat["S_upd"] - flat["S_orig"]
        flat["importance_weight"] = (logw - logw.max()).exp()  # the user's weights
        flat["exp_logw"] = logw.exp()
        if keeps.importance_details:
            details = importance_details(flat, {k: _shape(v) for k, v in given.items()})
            self._state.importance_details = details
            self.run.event("importance_sampling_details", batch=batch_type, **details)
        if keeps.sequences:
            self._write_importance_rows(f"importance/{batch_type}", flat)
        if keeps.raw_tensors:
            for key, value in given.items():
                self.run.tensor(f"{batch_type}/{key}", value if isinstance(value, torch.Tensor) else flat[key])
            self.run.tensor(f"{batch_type}/logw", flat["logw"])
            self.run.tensor(f"{batch_type}/importance_weights", flat["importance_weight"])
        self.run.flush()

    @_logging_call
    def log_ground_truth_results(self, results: Mapping) -> None:
        """The ground truth (H_orig, H_upd, deltaH_true, per-token variants, diagnostics): standard and up."""
        if not (self.keeps.ground_truth and self._state.logs_reduced):
            return
        self._state.ground_truth = plain(results, SMALL_TENSOR_ITEMS)
        self.run.event("ground_truth", **plain(results))
        self.run.flush()

    # --- helpers ------------------------------------------------------------------------------------------
    def _write_rows(self, name: str, count: int, columns, chunk_rows: int, lookups: list | None = None) -> None:
        """Stream rows chunk by chunk: ``columns(start, stop)`` builds one chunk, which ships before the next.

        ``columns`` returns a dict of columns, or (columns, per-row lengths) for ragged token rows.
        """
        stream = self.run.stream(name, chunk_rows=chunk_rows, lookups=lookups)
        for begin in range(0, count, chunk_rows):
            chunk = columns(begin, min(count, begin + chunk_rows))
            built, lengths = chunk if isinstance(chunk, tuple) else (chunk, None)
            stream.extend(lengths=lengths, **built)
        stream.flush()

    def _write_vocabulary(self, ids: list[int]) -> None:
        """The ids of ``ids`` the run has not stored yet, with their texts, as ``vocab`` rows of up to
        VOCAB_ROW_IDS ids each: a row per id would cost the stream's bookkeeping per id."""
        new, texts = self._vocabulary.new_entries(ids)
        if new:
            stream = self.run.stream(TOKEN_TEXTS["table"])
            for at in range(0, len(new), VOCAB_ROW_IDS):
                stream.append(token_id=new[at : at + VOCAB_ROW_IDS], text=texts[at : at + VOCAB_ROW_IDS])
            stream.flush()

    def _write_importance_rows(self, name: str, columns: dict) -> None:
        names = list(columns)
        stacked = torch.stack(list(columns.values()))

        def chunk(begin: int, end: int) -> dict:
            values = stacked[:, begin:end].tolist()  # one sync per chunk
            return {"sequence_id": list(range(begin, end)), **dict(zip(names, values))}

        self._write_rows(name, stacked.shape[1], chunk, SEQUENCE_CHUNK_ROWS)

    def _close(self, complete: bool, reason: str | None, final_results: Mapping | None = None) -> str:
        """Close the run (final records first when complete) and write the summary beside it.

        Returns the main log's path (in a job of several ranks, the run folder)."""
        state, run = self._state, self.run
        self._state, self.run = None, None
        _OPEN.discard(self)
        begin = time.perf_counter_ns()
        total = time.perf_counter() - state.started
        timing = _timing(final_results or {}, state.timing, total)
        reduced = final_results if state.logs_reduced else None  # other ranks leave the results to rank 0
        results = plain(reduced or {})
        core = _core_results(state, results) if state.logs_reduced else {}
        with layout.closing(state.paths.root):  # no retention between the footer and the summary
            try:
                if core and not state.core_results:
                    run.event("core_results", **core)  # the plan logs core results always; take them from the results
                if final_results is not None:
                    run.event("final_results", **({"results": results} if state.logs_reduced else {}), timing=timing)
            finally:
                path = run.close(complete=complete, reason=reason)
            close_ns = time.perf_counter_ns() - begin
            summary = _summary(state, run.result or {}, timing, core, plain(reduced, SMALL_TENSOR_ITEMS), close_ns,
                               total)
            atomic_write(state.paths.summary, msgspec.json.format(msgspec.json.encode(summary), indent=2))
        self.last_summary = summary
        if not complete:
            self.logger.warning("asynclog: %s closed incomplete (%s)", path, reason)
        if state.where is None:
            return path
        self._check_manifest(state)
        return state.paths.main

    def _check_manifest(self, state: _RunState) -> None:
        """Rank 0 wrote the folder's manifest long before another rank closes, unless the ranks' names differed:
        say so where the probe will see it (this rank's shard is otherwise an orphan no reader opens)."""
        folder = state.paths.main
        if state.where.rank > 0 and ranks.read_manifest(folder) is None:
            self.logger.warning("asynclog: rank %d found no manifest.json from rank 0 in %s: did rank 0 log under "
                                "another run name? This rank's log is there, but the run folder of rank 0 lacks it",
                                state.where.rank, folder)

    def __repr__(self) -> str:
        state = "disabled" if not self.enabled else ("open" if self._state else "idle")
        return f"<asynclog.DetailedLogger level={self.level} {state}>"


_DETAIL_STATS = {"logw_stats": "logw", "weight_stats": "importance_weight", "S_orig_stats": "S_orig",
                 "S_upd_stats": "S_upd", "RB_orig_stats": "RB_orig", "RB_upd_stats": "RB_upd"}


def importance_details(flat: Mapping[str, torch.Tensor], shapes: Mapping[str, list]) -> dict:
    """The user's logger's ``importance_sampling_details``: mean, std (n - 1), min, max of each quantity (and
    the shape given, for S and RB), read back with one host sync."""
    stacked = torch.stack([torch.stack([t.mean(), t.std(), t.min(), t.max()])
                           for t in (flat[key] for key in _DETAIL_STATS.values())])
    out = {}
    for (name, key), values in zip(_DETAIL_STATS.items(), stacked.tolist()):
        out[name] = dict(zip(("mean", "std", "min", "max"), (None if v != v else v for v in values)))
        if key in shapes:
            out[name]["shape"] = shapes[key]
    return out


def _shape(value) -> list:
    return list(value.shape) if isinstance(value, torch.Tensor) else list(torch.as_tensor(value).shape)


def _config_G(config) -> Any:
    batch_config = config.get("batch_config") if isinstance(config, Mapping) else None
    return plain(batch_config.get("G")) if isinstance(batch_config, Mapping) else None


def _core_results(state: _RunState, results: dict) -> dict:
    """The plan's core results: what the probe logged, else the plan's keys of its final results; ``G`` from the
    run's ``batch_config`` when neither has it, as the user's logger takes it."""
    core = {key: results[key] for key in CORE_KEYS if key in results}
    core.update(state.core_results)
    if core.get("G") is None and state.config_G is not None:
        core["G"] = state.config_G
    return core


def _timing(final_results: Mapping, measured: dict, total: float) -> dict:
    """Timing as the user's logger keeps it: ``<phase>_time`` for each phase timed here and ``total_time``, then
    the probe's own ``timing`` entries (its ``total_time`` too, where it reports one)."""
    reported = final_results.get("timing") if isinstance(final_results, Mapping) else None
    timing = {f"{phase}_time": seconds for phase, seconds in measured.items()}
    timing["total_time"] = total
    timing.update(plain(reported) if isinstance(reported, Mapping) else {})
    return timing


def _summary(state: _RunState, result: dict, timing: dict, core: dict, results, close_ns: int, total: float) -> dict:
    stats = result.get("stats", {})
    probe_seconds = (state.busy_ns + close_ns) / 1e9
    cost = {"probe_seconds": probe_seconds, "fraction_of_run": probe_seconds / total if total > 0 else None,
            "start_seconds": state.start_ns / 1e9, "close_seconds": close_ns / 1e9, **stats}
    summary = {**state.start_summary, "complete": result.get("complete", False), "reason": result.get("reason"),
               "core_results": core, "timing": timing}
    if state.batch_statistics:
        summary["batch_statistics"] = state.batch_statistics
    ground_truth = _summary_ground_truth(state)
    if ground_truth is not None:
        summary["ground_truth"] = ground_truth
    if results is not None:
        summary["results"] = results
    summary["logging_cost"] = cost
    summary["stats"] = stats  # the key the writer uses when it writes this file after a crash
    return summary


def _summary_ground_truth(state: _RunState) -> dict | None:
    """The ground truth as logged, with the user's summary keys where the user had them (``ESS`` from its
    diagnostics) and the importance-sampling details, as the user's log nests them."""
    if state.ground_truth is None and state.importance_details is None:
        return None
    gt = dict(state.ground_truth or {})
    diagnostics = gt.get("diagnostics")
    if isinstance(diagnostics, Mapping) and "ESS" in diagnostics:
        gt.setdefault("ESS", diagnostics["ESS"])
    if state.importance_details is not None:
        gt["importance_sampling_details"] = state.importance_details
    return gt


# --- run metadata ----------------------------------------------------------------------------------------
def run_metadata(checkpoint_path, config, checkpoint_name: str | None = None) -> dict:
    """The plan's run metadata: time, versions, git commit, checkpoint (its path, and the name its files and the
    tools give it), config hash, environment."""
    now = datetime.now(timezone.utc)
    return {
        "timestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "local_time": datetime.now().isoformat(timespec="seconds"),
        "asynclog_version": __version__,
        "git_commit": git_commit(),
        "checkpoint_path": None if checkpoint_path is None else os.fspath(checkpoint_path),
        "checkpoint_name": checkpoint_name,
        "config_hash": config_hash(config),
        "command": list(sys.argv),
        "environment": environment(),
    }


def config_hash(config: Any) -> str:
    """sha256 of the canonical JSON of ``plain(config)``: keys sorted, no spaces, UTF-8."""
    text = json.dumps(plain(config), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def git_commit(cwd: str | None = None) -> str | None:
    """``git rev-parse HEAD`` in the working directory; None outside a repository or without git (2 s cap).

    Asked once per directory and process: a sweep's runs share the code the process is running, and a
    fork and exec per run would cost milliseconds each.
    """
    return _git_commit(cwd or os.getcwd())


@functools.lru_cache(maxsize=16)
def _git_commit(cwd: str) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=2, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def environment() -> dict:
    """Python, torch, CUDA, the GPU (name, memory) when CUDA is available, and host memory."""
    import psutil

    env = {"python_version": platform.python_version(), "torch_version": str(torch.__version__),
           "cuda_version": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
           "gpu_name": None, "memory_gb": None, "gpu_count": 0,
           "host_memory_gb": round(psutil.virtual_memory().total / 2**30, 2), "cpu_count": os.cpu_count(),
           "platform": platform.platform(), "hostname": platform.node()}
    if env["cuda_available"]:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        env.update(gpu_name=props.name, memory_gb=round(props.total_memory / 2**30, 2),
                   gpu_count=torch.cuda.device_count())
    return env


# --- values ----------------------------------------------------------------------------------------------
def plain(value: Any, max_items: int | None = None, _depth: int = 0) -> Any:
    """``value`` as plain JSON/msgpack data: str keys, numbers, lists; tensors as numbers or lists.

    A tensor or array of more than SMALL_TENSOR_ITEMS elements becomes ``{"tensor_shape", "dtype"}`` (log it with
    raw tensors instead); with ``max_items`` a longer list becomes ``{"list_length"}``. Unknown objects
    become their ``repr``.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if _depth > 32:
        return repr(value)
    if isinstance(value, torch.Tensor):
        return _plain_array(value.detach(), value.numel(), list(value.shape), dtype_name(value.dtype))
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic)):
        return _plain_array(value, value.size, list(value.shape), str(value.dtype))
    if isinstance(value, Mapping):
        return {str(k): plain(v, max_items, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        if max_items is not None and len(items) > max_items:
            return {"list_length": len(items)}
        return [plain(v, max_items, _depth + 1) for v in items]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value)


def _plain_array(value, count: int, shape: list, dtype: str):
    if count == 1:
        return value.item()
    if count <= SMALL_TENSOR_ITEMS:
        return value.cpu().tolist() if isinstance(value, torch.Tensor) else value.tolist()
    return {"tensor_shape": shape, "dtype": dtype}


# --- interpreter exit --------------------------------------------------------------------------------------
_OPEN: "weakref.WeakSet[DetailedLogger]" = weakref.WeakSet()


def _close_open_loggers() -> None:
    """At exit, close runs the probe never finalized as incomplete, before asynclog's own exit hook runs.

    (atexit runs hooks last-registered first; asynclog's session hook was registered when the package was
    imported, before this module, so this one runs first.)
    """
    for logger in list(_OPEN):
        try:
            logger._close(False, "the probe exited before finalize_log")
        except Exception:  # noqa: BLE001 - one broken run must not keep the others open
            pass


atexit.register(_close_open_loggers)
