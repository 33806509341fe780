"""Reading the run folder of a job of several ranks as one run (the layout is drawn in ``ranks.py``).

``asynclog.open(folder)`` returns a ``ShardedLog``: events of every rank in time order, each with a
``rank`` field; a stream's chunks rank by rank, each chunk knowing its ``rank`` and each row carrying it;
``tensor(name, rank=...)``. A shard that is missing or was cut short (its rank was killed) makes the run
incomplete, and ``problems`` says which; the other ranks' data reads as usual.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator
from typing import Any

from .errors import CorruptLogError
from .ranks import read_manifest, shard_name
from .reader import Chunk, Log, frame_of

__all__ = ["ShardedLog", "is_run_folder"]


def is_run_folder(path: str | os.PathLike) -> bool:
    return os.path.isdir(path) and read_manifest(os.fspath(path)) is not None


class ShardedLog:
    """All shards of one run folder. Use as a context manager or call ``close``."""

    def __init__(self, folder: str | os.PathLike):
        self.path = os.fspath(folder)
        self.manifest = read_manifest(self.path)
        if self.manifest is None:
            raise CorruptLogError(f"{self.path} has no asynclog manifest.json (not a run folder of ranks)", 0)
        self.world_size: int = self.manifest["world_size"]
        self.shards: dict[int, Log] = {}
        self.problems: list[str] = []
        for rank in range(self.world_size):
            shard = os.path.join(self.path, shard_name(rank))
            try:
                self.shards[rank] = Log(shard)
            except FileNotFoundError:
                self.problems.append(f"rank {rank}: no shard {shard_name(rank)}")
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
        """Every rank's records merged in time order, each with its ``rank``."""
        def tagged(rank: int, log: Log) -> Iterator[tuple[float, int, dict]]:
            for record in log.events(type=type, name=name):
                yield record.get("time", 0.0), rank, {**record, "rank": rank}

        merged = heapq.merge(*(tagged(r, log) for r, log in sorted(self.shards.items())), key=lambda t: t[:2])
        for _, _, record in merged:
            yield record

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

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"incomplete ({'; '.join(self.problems)})"
        return f"<asynclog.ShardedLog {self.path!r} {self.world_size} ranks {state}>"
