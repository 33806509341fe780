"""asynclog itself: ``asynclog.start``, ``run.event``, ``run.stream(...).append``, ``run.tensor``, ``run.close``.

Default config at debug level: the numbers are what a user gets without tuning. ``benchmarks/bench_core.py``
passes a config (policy ``error``) or a level of its own for the figures only asynclog has.
"""

from __future__ import annotations

from asynclog.bench.peers._base import Adapter


class AsyncLog(Adapter):
    name = "asynclog"
    how = {"events": "native", "tokens": "native (stream)", "tensors": "native"}

    def __init__(self, config: dict | None = None, level: str = "debug"):
        self.config, self.level = config, level

    def open(self, directory: str, workload: str) -> None:
        import asynclog

        self.run = asynclog.start(directory, name="bench", level=self.level, config=self.config)
        self.stream = self.run.stream("tokens") if workload == "tokens" else None

    def event(self, name: str, fields: dict) -> None:
        self.run.event(name, **fields)

    def row(self, sequence_id: int, tokens, logprobs, entropies) -> None:
        self.stream.append(sequence_id=sequence_id, tokens=tokens, logprobs=logprobs, entropies=entropies)

    def tensor(self, name: str, tensor) -> None:
        self.run.tensor(name, tensor)

    def close(self) -> None:
        self.run.close()

    def stats(self) -> dict:
        stats = (self.run.result or {}).get("stats", {})
        keep = ("bytes_on_disk", "compression_ratio", "queue_high_water", "dropped_records", "dropped_tensors",
                "dropped_chunks")
        return {k: stats[k] for k in keep if k in stats}
