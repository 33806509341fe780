"""Reading the run folder of a job of several ranks as one run (the layout is drawn in ``ranks.py``).

``asynclog.open(folder)`` returns a ``ShardedLog``: events of every rank in time order, each with a
``rank`` field; a stream's chunks rank by rank, each chunk knowing its ``rank`` and each row carrying it;
``tensor(name, rank=...)``. A shard that is missing or was cut short (its rank was killed) makes the run
incomplete, and ``problems`` says which; the other ranks' data reads as usual. The folder is read through
``ondisk.run_folder``: a damaged manifest is a CorruptLogError saying why, and only the shards that are in
the folder are opened, whatever world size the manifest claims (the missing ranks are named as ranges).

``batch_statistics()`` merges the ``batch_statistics`` records DetailedLogger wrote on each rank into the
statistics of all ranks' batches together, exactly: from each rank's raw aggregates (counts, sums, sums of
squared deviations, min, max, length histograms), never by averaging averages.
"""

from __future__ import annotations

import heapq
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from asynclog._ondisk import MANIFEST, is_run_folder, run_folder
from asynclog._reader import Chunk, Log, frame_of, warn_unseen
from asynclog.errors import CorruptLogError

__all__ = ["ShardedLog", "open_log", "is_run_folder", "merge_batch_statistics"]


class ShardedLog:
    """All shards of one run folder. Use as a context manager or call ``close``."""

    def __init__(self, folder: str | os.PathLike):
        self.path = os.fspath(folder)
        found = run_folder(self.path)
        if found is None:
            raise CorruptLogError(f"{self.path} has no asynclog {MANIFEST} (not a run folder of ranks)", 0)
        if found.manifest is None:
            raise CorruptLogError(f"{self.path}: {found.problem}", 0)
        self.manifest: dict = msgspec.to_builtins(found.manifest)
        self.world_size: int = found.manifest.world_size
        self.shards: dict[int, Log] = {}
        self.problems: list[str] = [found.missing()] if found.missing() else []
        for rank, name in sorted(found.shards.items()):
            try:
                self.shards[rank] = Log(os.path.join(self.path, name))
            except FileNotFoundError:
                self.problems.append(f"rank {rank}: no shard {name}")
            except OSError as exc:
                self.problems.append(f"rank {rank}: cannot read {name}: {exc.strerror or exc}")
            except CorruptLogError as exc:
                self.problems.append(f"rank {rank}: {exc}")
        for rank, log in self.shards.items():
            if not log.complete:
                why = (log.footer or {}).get("reason") or f"no footer (cut at {log.cut_at})"
                self.problems.append(f"rank {rank}: incomplete: {why}")

    @property
    def complete(self) -> bool:
        """Every rank's shard is there and was closed normally."""
        return not self.problems

    @property
    def ranks(self) -> list[int]:
        """The ranks whose shard could be opened."""
        return sorted(self.shards)

    def shard(self, rank: int) -> Log:
        try:
            return self.shards[rank]
        except KeyError:
            raise KeyError(f"no readable shard for rank {rank} in {self.path}; readable: {self.ranks}") from None

    # --- records ----------------------------------------------------------------------------------------
    def events(self, type: str | None = None, name: str | None = None) -> Iterator[dict]:
        """Every rank's records merged in time order, each with its ``rank``. A ``name`` that only some ranks
        logged (rank 0's reduced results) is no mistake; one in no shard at all ends with one warning, as
        ``Log.events`` words it."""
        seen: set[str] | None = None if name is None else set()
        yield from self._events(type, name, seen)
        warn_unseen(name, seen, self.path)

    def _events(self, type: str | None, name: str | None, seen: set[str] | None) -> Iterator[dict]:
        def tagged(rank: int, log: Log) -> Iterator[tuple[float, int, dict]]:
            for record in log._events(type, name, seen=seen):
                yield record.get("time", 0.0), rank, {**record, "rank": rank}

        merged = heapq.merge(*(tagged(r, log) for r, log in sorted(self.shards.items())), key=lambda t: t[:2])
        for _, _, record in merged:
            yield record

    def batch_statistics(self) -> dict[str, dict]:
        """Each batch type's statistics over every rank's batches (``merge_batch_statistics``); empty for a
        run that logged none. CorruptLogError when the records carry aggregates that are not DetailedLogger's
        (a file may come from anyone)."""
        grouped: dict[str, list[dict]] = {}
        for record in self._events(None, "batch_statistics", None):
            data = record.get("data")  # a map when DetailedLogger wrote it; anything in a crafted file
            grouped.setdefault(data.get("batch") if isinstance(data, dict) else None, []).append(data)
        try:
            return {batch: merge_batch_statistics(found) for batch, found in grouped.items()}
        except (KeyError, TypeError, AttributeError, IndexError, ZeroDivisionError, OverflowError) as exc:
            raise CorruptLogError(f"{self.path}: its batch_statistics records do not merge "
                                  f"({type(exc).__name__}: {exc})", 0) from None

    # --- tensors ----------------------------------------------------------------------------------------
    def tensor_names(self, rank: int | None = None) -> list[str]:
        if rank is not None:
            return self.shard(rank).tensor_names()
        return sorted({name for log in self.shards.values() for name in log.tensor_names()})

    def tensor(self, name: str, rank: int = 0, which: int = -1):
        """The tensor ``name`` as rank ``rank`` logged it (the last of its repeats unless ``which`` says)."""
        return self.shard(rank).tensor(name, which)

    # --- streams ----------------------------------------------------------------------------------------
    def stream_names(self) -> list[str]:
        return sorted({name for log in self.shards.values() for name in log.stream_names()})

    def stream(self, name: str) -> Iterator[Chunk]:
        """The stream's chunks, rank by rank; ``chunk.rank`` says whose. Ranks that never wrote it are skipped."""
        found = False
        for rank, log in sorted(self.shards.items()):
            if name not in log.stream_names():
                continue
            found = True
            for chunk in log.stream(name):
                chunk.rank = rank
                yield chunk
        if not found:
            raise KeyError(f"no stream {name!r} in any shard of {self.path}; streams: {self.stream_names()}")

    def rows(self, name: str) -> Iterator[dict]:
        """The stream's rows, rank by rank, each with a ``rank`` column."""
        for chunk in self.stream(name):
            for row in chunk.iter_rows():
                yield {**row, "rank": chunk.rank}

    def to_pandas(self, what: str = "events", type: str | None = None, name: str | None = None) -> Any:
        """As ``Log.to_pandas``, with every rank's rows and a ``rank`` column."""
        return frame_of(self, what, type, name)

    # --- lifecycle --------------------------------------------------------------------------------------
    def close(self) -> None:
        for log in self.shards.values():
            log.close()

    def __enter__(self) -> "ShardedLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _repr_html_(self) -> str:
        """Jupyter shows the run's summary card (``asynclog.tools.report.run_card``)."""
        from asynclog.tools.report import run_card

        return run_card(self)

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"incomplete ({'; '.join(self.problems)})"
        return f"<asynclog.ShardedLog {self.path!r} {self.world_size} ranks {state}>"


# --- batch statistics of several ranks ---------------------------------------------------------------------
def merge_batch_statistics(records: Iterable[dict]) -> dict:
    """The statistics of all the batches behind ``records`` together, as ``batchstats.batch_statistics``
    would compute them over the concatenated batch: exact, from each record's ``aggregates`` (percentiles
    from merged length histograms, with the same linear interpolation; means and sample stds from counts,
    sums and sums of squared deviations, merged as Chan et al.). ``records``: the data of
    ``batch_statistics`` records written by ranks of one job (each with ``aggregates``).
    ``G`` is None where the records disagree; ``padded_length`` is the largest; ``merged_records`` counts them.
    """
    records = list(records)
    if not records or any(not isinstance(r.get("aggregates"), dict) for r in records):
        raise ValueError("merge_batch_statistics needs batch_statistics records that carry 'aggregates' "
                         "(written by DetailedLogger in a job of several ranks)")
    parts = [r["aggregates"] for r in records]
    percentiles = records[0]["length_percentiles"]
    prompts = _merged_counts(p["prompt_length"] for p in parts)
    out: dict = {"num_prompts": sum(r["num_prompts"] for r in records),
                 "num_sequences": sum(r["num_sequences"] for r in records),
                 "G": records[0]["G"] if len({r["G"] for r in records}) == 1 else None,
                 "padded_length": max(r["padded_length"] for r in records),
                 "avg_prompt_length": prompts["sum"] / prompts["count"]}
    merged = {"prompt_length": prompts}
    for key in ("sequence_length", "generation_length"):
        hist = merged[key] = _merged_histogram(p[key] for p in parts)
        out[f"avg_{key}"] = sum(v * c for v, c in zip(hist["values"], hist["counts"])) / sum(hist["counts"])
        out[f"max_{key}"] = hist["values"][-1]
        out[f"{key}_distribution"] = [_quantile(hist, p / 100) for p in percentiles]
    gens = merged["generation_length"]
    out["std_generation_length"] = _histogram_std(gens, out["avg_generation_length"])
    out["min_generation_length"] = gens["values"][0]
    out["generation_length_percentiles"] = out["generation_length_distribution"]
    out["length_percentiles"] = list(percentiles)
    for key in ("advantages", "reward"):
        sets = [p[key] for p in parts if key in p]
        if sets:
            moments = merged[key] = _merged_moments(sets)
            n = moments["count"]
            out[f"avg_{key}"] = moments["sum"] / n
            out[f"{key}_std"] = math.sqrt(moments["m2"] / (n - 1)) if n > 1 else None
            out[f"std_{key}"] = math.sqrt(moments["m2"] / n)
            out[f"min_{key}"], out[f"max_{key}"] = moments["min"], moments["max"]
    for key in ("prompt_lens_meaning", "lengths_from"):  # how each rank read its batch (asynclog.probe.spans)
        out[key] = records[0].get(key) if len({r.get(key) for r in records}) == 1 else "differs by rank"
    out["aggregates"], out["merged_records"] = merged, len(records)
    return out


def _merged_counts(sets: Iterable[dict]) -> dict:
    sets = list(sets)
    return {"count": sum(s["count"] for s in sets), "sum": sum(s["sum"] for s in sets)}


def _merged_histogram(sets: Iterable[dict]) -> dict:
    counts: dict[int, int] = {}
    for s in sets:
        for value, count in zip(s["values"], s["counts"]):
            counts[value] = counts.get(value, 0) + count
    values = sorted(counts)
    return {"values": values, "counts": [counts[v] for v in values]}


def _histogram_std(hist: dict, mean: float) -> float:
    """The population std (n, as the user's logger's np.std) of the data a histogram counts."""
    m2 = sum(c * (v - mean) ** 2 for v, c in zip(hist["values"], hist["counts"]))
    return math.sqrt(m2 / sum(hist["counts"]))


def _nth(hist: dict, k: int) -> int:
    """The k-th smallest value (from 0) of the data the histogram counts."""
    for value, count in zip(hist["values"], hist["counts"]):
        if k < count:
            return value
        k -= count
    raise IndexError(k)


def _quantile(hist: dict, q: float) -> float:
    """``torch.quantile(data, q)`` (linear interpolation) from the data's histogram, to the last bit:
    the same position, and the same two-sided form of ``lerp``."""
    n = sum(hist["counts"])
    pos = q * (n - 1)
    below = math.floor(pos)
    low, high, weight = float(_nth(hist, below)), float(_nth(hist, min(below + 1, n - 1))), pos - below
    return low + weight * (high - low) if weight < 0.5 else high - (high - low) * (1 - weight)


def _merged_moments(sets: list[dict]) -> dict:
    """Count, sum, m2, min, max of the union (Chan et al.'s pairwise update: no cancellation, unlike sum of
    squares minus square of sums)."""
    n, total, m2 = 0, 0.0, 0.0
    for s in sets:
        if s["count"] == 0:
            continue
        if n:
            delta = s["sum"] / s["count"] - total / n
            m2 += delta * delta * n * s["count"] / (n + s["count"])
        n, total, m2 = n + s["count"], total + s["sum"], m2 + s["m2"]
    return {"count": n, "sum": total, "m2": m2, "min": min(s["min"] for s in sets),
            "max": max(s["max"] for s in sets)}


def open_log(path: str | os.PathLike) -> Log | ShardedLog:
    """Open a log for reading (``asynclog.open``): a ``Log``, or for the run folder of a job of several ranks
    a ``ShardedLog`` that reads every rank's shard as one run. It lives here, above both, so that the reader
    needs nothing of the run folders built on it."""
    return ShardedLog(path) if os.path.isdir(path) else Log(path)
