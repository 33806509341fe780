"""The two calls a probe makes most, in the caller's thread CPU time, against floors run side by side.

    .venv/bin/python benchmarks/bench_hot_paths.py [--calls 100000] [--repeats 7]

Events, ``run.event("core", i=i, **FIELDS)`` with 10 scalar fields (the ``events`` workload's record):
- floor: the synchronous floor's ``event`` (``asynclog/bench/peers/sync_floor.py``): build the record, msgspec
  encode it, write it to a zstd stream, all in the caller's thread;
- call: a Python function with ``run.event``'s keyword signature that does nothing (the call and its
  keyword dict alone);
- api: the same function building the record and encoding it, what any Python logger with this API pays
  before it logs anything;
- ``run.event`` itself.

Token rows of 150 tokens (int64 ids, float32 log-probs and entropies, an int id; the ``tokens`` workload's row):
- floor: the synchronous floor's ``row`` (the three columns' bytes, a msgspec encode, a zstd stream write);
- ``stream.append(**row)``, one row per call;
- ``stream.extend`` of 64 rows at a time (``[64, 150]`` tensors), per row.

Thread CPU time (``time.thread_time_ns``) per call, best of ``--repeats`` rounds: robust on a shared machine
where wall time is not. Goals (issue 10): an event at most 2x the floor; a row at most 0.5x the floor.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time

import torch

import asynclog
from asynclog.bench import event_fields, load, token_row
from asynclog._records import encode_record

EXTEND_ROWS = 64


def cpu_ns(call, calls: int, repeats: int) -> float:
    """Thread CPU ns per call of ``call(i)``, the best of ``repeats`` rounds of ``calls`` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time_ns()
        for i in range(calls):
            call(i)
        best = min(best, (time.thread_time_ns() - start) / calls)
    return best


def call_only(name: str, /, **fields) -> None:
    """What calling with ten keyword arguments costs: the call and the dict of them."""


def api_only(name: str, /, **fields) -> bytes:
    """What the keyword API costs before any logging: the call, the record, one encode."""
    return encode_record({"type": "event", "name": name, "time": time.time(), "data": fields}, fields)


def bench_events(tmp: str, calls: int, repeats: int) -> dict:
    fields = {k: v for k, v in event_fields(7, 100, random.Random(0)).items() if k != "step"}
    floor = load("sync")()
    floor.open(tmp, "events")
    out = {"floor": cpu_ns(lambda i: floor.event("core", {"i": i, **fields}), calls, repeats)}
    floor.close()
    out["call"] = cpu_ns(lambda i: call_only("core", i=i, **fields), calls, repeats)
    out["api"] = cpu_ns(lambda i: api_only("core", i=i, **fields), calls, repeats)
    with asynclog.start(tmp, name="events") as run:
        out["run.event"] = cpu_ns(lambda i: run.event("core", i=i, **fields), calls, repeats)
    return out


def bench_rows(tmp: str, calls: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    rows = [token_row(g) for _ in range(EXTEND_ROWS)]
    batch = [torch.stack(column) for column in zip(*rows)]
    floor = load("sync")()
    floor.open(tmp, "tokens")
    out = {"floor": cpu_ns(lambda i: floor.row(i, *rows[i % EXTEND_ROWS]), calls, repeats)}
    floor.close()
    with asynclog.start(tmp, name="rows") as run:
        stream = run.stream("tokens")

        def append(i: int) -> None:
            tokens, logprobs, entropies = rows[i % EXTEND_ROWS]
            stream.append(sequence_id=i, tokens=tokens, logprobs=logprobs, entropies=entropies)

        out["stream.append"] = cpu_ns(append, calls, repeats)
        ids = list(range(EXTEND_ROWS))
        extended = run.stream("tokens_extended")
        per_call = cpu_ns(lambda i: extended.extend(sequence_id=ids, tokens=batch[0], logprobs=batch[1],
                                                    entropies=batch[2]), max(1, calls // EXTEND_ROWS), repeats)
        out["stream.extend, per row"] = per_call / EXTEND_ROWS
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100_000, help="event calls per round (rows: a fifth)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = {"events": bench_events(tmp, args.calls, args.repeats),
                   "rows": bench_rows(tmp, max(EXTEND_ROWS, args.calls // 5), args.repeats)}
    for section, goal in (("events", "goal: run.event <= 2x the floor"), ("rows", "goal: a row <= 0.5x the floor")):
        figures = results[section]
        print(f"\n{section}: thread CPU ns per call, best of {args.repeats} ({goal})")
        for what, ns in figures.items():
            print(f"  {what:<24} {ns:>9,.0f} ns   {ns / figures['floor']:>5.2f}x the floor")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
