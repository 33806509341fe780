"""Core pipeline benchmarks: asynclog against its baselines, side by side in one process run, as ratios.

    .venv/bin/python benchmarks/bench_core.py            # everything (a few minutes)
    .venv/bin/python benchmarks/bench_core.py --quick    # smaller sizes (under a minute)

Goals (docs: benchmarks/RESULTS.md):
  event        p50 <= 0.1x stdlib QueueHandler (json.dumps) and <= 3x a synchronous msgspec+zstd writer
  stream       stream.append of a 150-token row, p50 <= 0.5x the synchronous floor's per-row cost
  tensor       run.tensor on CPU tensors 1 KiB .. 64 MiB <= 1.5x a plain copy (clone) of the same bytes
  throughput   until durable: float32 tensors >= 1x torch.save (first call -> durable; --only floats runs
               that part alone); tokens and records >= 0.8x zstd alone
  rss          producer RSS growth while streaming 2 GiB of tokens <= staging pool + 64 MiB
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import logging.handlers
import os
import queue
import statistics
import sys
import tempfile
import time

import msgspec
import psutil
import torch
import zstandard

import asynclog

FIELDS = {f"f{i}": i * 1.5 for i in range(8)} | {"step": 1, "tag": "phase1"}  # 10 scalar fields
LEVEL = 3


def pct(values: list[int], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] / 1e3  # ns -> us


CPU_NS: dict[str, int] = {}  # thread CPU time per variant: robust where wall time is noisy (shared machines)


def timed_calls(call, n: int, label: str = "") -> list[int]:
    out = []
    clock = time.perf_counter_ns
    cpu = time.thread_time_ns()
    for i in range(n):
        t = clock()
        call(i)
        out.append(clock() - t)
    CPU_NS[label] = CPU_NS.get(label, 0) + time.thread_time_ns() - cpu
    return out


def cpu_us(label: str, calls: int) -> float:
    """Mean thread CPU time per call, timer overhead included alike for every variant."""
    return CPU_NS[label] / calls / 1e3


class SyncFloor:
    """The floor: msgspec encode + zstandard stream writer, synchronously in the caller's thread."""

    def __init__(self, path: str):
        self.file = open(path, "wb")
        self.out = zstandard.ZstdCompressor(level=LEVEL).stream_writer(self.file)
        self.encode = msgspec.msgpack.Encoder().encode

    def write(self, record) -> None:
        self.out.write(self.encode(record))

    def close(self) -> None:
        self.out.flush(zstandard.FLUSH_FRAME)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.out.close()


def bench_events(tmp: str, n: int) -> dict:
    q: queue.Queue = queue.Queue(-1)
    handler = logging.FileHandler(os.path.join(tmp, "stdlib.jsonl"))
    listener = logging.handlers.QueueListener(q, handler)
    logger = logging.getLogger("bench.stdlib")
    logger.propagate = False
    logger.addHandler(logging.handlers.QueueHandler(q))
    logger.setLevel(logging.INFO)
    listener.start()
    floor = SyncFloor(os.path.join(tmp, "floor.zst"))
    run = asynclog.start(tmp, name="events")
    results = {"stdlib": [], "floor": [], "asynclog": []}
    for _ in range(3):  # interleave, so drift hits every variant alike
        results["stdlib"] += timed_calls(lambda i: logger.info(json.dumps({"name": "core", "i": i, **FIELDS})), n // 3,
                                         "ev_stdlib")
        results["floor"] += timed_calls(lambda i: floor.write({"name": "core", "i": i, **FIELDS}), n // 3, "ev_floor")
        results["asynclog"] += timed_calls(lambda i: run.event("core", i=i, **FIELDS), n // 3, "ev_asynclog")
    listener.stop()
    floor.close()
    run.close()
    muted = asynclog.start(tmp, name="muted", level="minimal")
    gated = timed_calls(lambda i: muted.at("debug").event("core", i=i), n // 3)
    muted.close()
    calls = 3 * (n // 3)
    return {"p50_us": {k: pct(v, 0.5) for k, v in results.items()},
            "p99_us": {k: pct(v, 0.99) for k, v in results.items()},
            "cpu_mean_us": {k: cpu_us("ev_" + k, calls) for k in results},
            "gated_p50_us": pct(gated, 0.5),
            "ratio_vs_stdlib": pct(results["asynclog"], 0.5) / pct(results["stdlib"], 0.5),
            "ratio_vs_floor": pct(results["asynclog"], 0.5) / pct(results["floor"], 0.5)}


def bench_refusal(tmp: str, n: int) -> dict:
    """Policy ``error`` with the writer stopped (SIGSTOP): what a refused ``event`` costs, against an accepted one."""
    import signal

    normal = asynclog.start(tmp, name="accepted", config={"policy": "error"})
    accepted = timed_calls(lambda i: normal.event("core", i=i, **FIELDS), n)
    normal.close()
    run = asynclog.start(tmp, name="refusal", config={"policy": "error", "queue_batches": 2, "batch_records": 64})
    pid = run._channel.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        refused = []
        while len(refused) < n:  # fill the pipe and the queue, then time only refused calls
            start = time.perf_counter_ns()
            try:
                run.event("core", i=-1, payload="x" * 4000, **FIELDS)
            except asynclog.QueueFullError:
                refused.append(time.perf_counter_ns() - start)
    finally:
        os.kill(pid, signal.SIGCONT)
    run.close()
    return {"accepted_p50_us": pct(accepted, 0.5), "refused_p50_us": pct(refused, 0.5),
            "refused_p99_us": pct(refused, 0.99)}


def token_row(i: int):
    g = torch.Generator().manual_seed(i)
    return {"sequence_id": i, "tokens": torch.randint(0, 151_000, (150,), generator=g),
            "logprobs": -torch.rand(150, generator=g) * 5, "entropies": torch.rand(150, generator=g) * 3}


def bench_stream(tmp: str, n: int) -> dict:
    rows = [token_row(i) for i in range(64)]
    floor = SyncFloor(os.path.join(tmp, "floor_rows.zst"))

    def floor_row(i):
        r = rows[i % 64]
        floor.write({"sequence_id": r["sequence_id"], "tokens": r["tokens"].numpy().tobytes(),
                     "logprobs": r["logprobs"].numpy().tobytes(), "entropies": r["entropies"].numpy().tobytes()})

    run = asynclog.start(tmp, name="stream", level="debug")
    stream = run.stream("tokens/E_batch", chunk_rows=64)
    res = {"floor": [], "asynclog": []}
    for _ in range(3):
        res["floor"] += timed_calls(floor_row, n // 3, "st_floor")
        res["asynclog"] += timed_calls(lambda i: stream.append(**rows[i % 64]), n // 3, "st_asynclog")
    floor.close()
    run.close()
    return {"p50_us": {k: pct(v, 0.5) for k, v in res.items()}, "p99_us": {k: pct(v, 0.99) for k, v in res.items()},
            "mean_us": {k: statistics.mean(v) / 1e3 for k, v in res.items()},
            "cpu_mean_us": {k: cpu_us("st_" + k, 3 * (n // 3)) for k in res},
            "ratio_p50": pct(res["asynclog"], 0.5) / pct(res["floor"], 0.5),
            "ratio_mean": statistics.mean(res["asynclog"]) / statistics.mean(res["floor"])}


def bench_tensor(tmp: str, sizes: list[int], reps: int) -> dict:
    """Caller latency of run.tensor with room in the pool, against x.clone() of the same tensor."""
    run = asynclog.start(tmp, name="tensor", level="debug", config={"staging_bytes": 256 << 20})
    out = {}
    for nbytes in sizes:
        x = torch.randn(nbytes // 4)
        ours, copies = [], []
        for _ in range(reps):
            run.flush(durable=True)  # an empty pool: measure the call, not the disk
            t = time.perf_counter_ns()
            run.tensor("x", x)
            ours.append(time.perf_counter_ns() - t)
            t = time.perf_counter_ns()
            x.clone()
            copies.append(time.perf_counter_ns() - t)
        out[_size(nbytes)] = {"asynclog_us": statistics.median(ours) / 1e3, "clone_us": statistics.median(copies) / 1e3,
                              "ratio": statistics.median(ours) / statistics.median(copies)}
    run.close()
    return out


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def bench_float_tensors(tmp: str, tensor_mib: int, count: int, repeats: int = 3) -> dict:
    """``count`` float32 tensors of ``tensor_mib`` MiB, first call until durable, against ``torch.save`` of each
    to its own file plus an fsync of every file. The two alternate ``repeats`` times (disks drift); medians.

    asynclog's clock starts at the first ``run.tensor`` (the run is started, so its writer is up, before) and
    stops when ``close`` returns, which is after the writer's fsync. ``with_start_s`` adds the ``start``.
    """
    tensors = [torch.randn(tensor_mib << 18) for _ in range(4)]
    total = tensor_mib * count / 1024  # GiB
    saves, ours, with_start = [], [], []
    for rep in range(repeats):
        t = time.perf_counter()
        for i in range(count):
            torch.save(tensors[i % 4], os.path.join(tmp, f"save{rep}_{i}.pt"))
        _fsync_dir_files(tmp, f"save{rep}_")
        saves.append(time.perf_counter() - t)
        started = time.perf_counter()
        run = asynclog.start(tmp, name=f"tp_tensors{rep}", level="debug")
        t = time.perf_counter()
        for i in range(count):
            run.tensor("x", tensors[i % 4])
        run.close()
        ours.append(time.perf_counter() - t)
        with_start.append(time.perf_counter() - started)
        for name in os.listdir(tmp):  # keep the disk's free space and page cache alike for every repeat
            if name.startswith(f"save{rep}_"):
                os.remove(os.path.join(tmp, name))
    torch_save, mine = statistics.median(saves), statistics.median(ours)
    return {"GiB": total, "torch_save_GBps": total / torch_save, "asynclog_GBps": total / mine,
            "ratio": torch_save / mine, "ratios": [round(s / o, 3) for s, o in zip(saves, ours)],
            "with_start_s": statistics.median(with_start)}


def bench_throughput(tmp: str, tensor_mib: int, count: int, token_rows: int, records: int) -> dict:
    out = {"float32_tensors": bench_float_tensors(tmp, tensor_mib, count)}

    rows = [token_row(i) for i in range(64)]
    ids = torch.cat([r["tokens"] for r in rows])
    zs = zstandard.ZstdCompressor(level=LEVEL)
    t = time.perf_counter()
    with open(os.path.join(tmp, "zstd_tokens.zst"), "wb") as f:
        for _ in range(token_rows // 64):
            f.write(zs.compress(ids.numpy().tobytes()))
        os.fsync(f.fileno())
    zstd_alone = time.perf_counter() - t
    t = time.perf_counter()
    with asynclog.start(tmp, name="tp_tokens", level="debug") as run:
        stream = run.stream("tokens", chunk_rows=64)
        for i in range(token_rows):
            stream.append(tokens=rows[i % 64]["tokens"])
    ours = time.perf_counter() - t
    batch = torch.stack([r["tokens"] for r in rows])
    t = time.perf_counter()
    with asynclog.start(tmp, name="tp_tokens_extend", level="debug") as run:
        stream = run.stream("tokens", chunk_rows=64)
        for _ in range(token_rows // 64):
            stream.extend(tokens=batch)
    ours_extend = time.perf_counter() - t
    out["token_ids"] = {"rows": token_rows, "ratio_append": zstd_alone / ours, "ratio_extend": zstd_alone / ours_extend}

    encode = msgspec.msgpack.Encoder().encode
    batch = [encode({"type": "event", "name": "core", "time": time.time(), "data": {"i": i, **FIELDS}}) for i in range(4096)]
    t = time.perf_counter()
    with open(os.path.join(tmp, "zstd_records.zst"), "wb") as f:
        for start in range(0, records, 4096):
            f.write(zs.compress(b"".join(encode({"type": "event", "name": "core", "time": time.time(),
                                                 "data": {"i": i, **FIELDS}}) for i in range(start, start + 4096))))
        os.fsync(f.fileno())
    zstd_alone = time.perf_counter() - t
    del batch
    t = time.perf_counter()
    with asynclog.start(tmp, name="tp_records") as run:
        for i in range(records):
            run.event("core", i=i, **FIELDS)
    ours = time.perf_counter() - t
    out["records"] = {"records": records, "ratio": zstd_alone / ours}
    return out


def _fsync_dir_files(directory: str, prefix: str) -> None:
    for name in os.listdir(directory):
        if name.startswith(prefix):
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)


def bench_startup(tmp: str) -> dict:
    """Time for a fresh process's ``import asynclog`` and first ``start`` (spawn, handshake, open), against
    ``import torch``. The import is timed too: asynclog loads its modules on first use."""
    import subprocess

    code = ("import time; t = time.perf_counter(); import asynclog; r = asynclog.start({tmp!r}, name='s'); "
            "print(time.perf_counter() - t); r.close()")
    starts = [float(subprocess.check_output([sys.executable, "-c", code.format(tmp=tmp)])) for _ in range(5)]
    torch_import = [float(subprocess.check_output([sys.executable, "-c",
                    "import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)"]))
                    for _ in range(3)]
    return {"first_start_s": statistics.median(starts), "import_torch_s": statistics.median(torch_import)}


def bench_rss(tmp: str, gib: float) -> dict:
    """Producer RSS growth while streaming ``gib`` of token rows (ids, log-probs, entropies)."""
    proc = psutil.Process()
    staging = 256 << 20
    rows = [token_row(i) for i in range(64)]
    row_bytes = 150 * (8 + 4 + 4)
    run = asynclog.start(tmp, name="rss", level="debug", config={"staging_bytes": staging})
    run.tensor("warm", torch.zeros(1))
    run.flush(durable=True)
    before, peak = proc.memory_info().rss, 0
    stream = run.stream("tokens", chunk_rows=64)
    for i in range(int(gib * (1 << 30) / row_bytes)):
        stream.append(**rows[i % 64])
        if i % 4096 == 0:
            peak = max(peak, proc.memory_info().rss)
    run.close()
    growth = (peak - before) / (1 << 20)
    return {"streamed_GiB": gib, "rss_growth_MiB": round(growth, 1), "budget_MiB": staging / (1 << 20) + 64,
            "within_budget": growth <= staging / (1 << 20) + 64}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="startup,events,refusal,stream,tensor,throughput,rss")
    args = parser.parse_args()
    quick = args.quick
    only = set(args.only.split(","))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "startup" in only:
            results["startup"] = bench_startup(tmp)
        if "events" in only:
            results["events"] = bench_events(tmp, 30_000 if quick else 150_000)
        if "refusal" in only:
            results["refusal"] = bench_refusal(tmp, 5_000 if quick else 20_000)
        if "stream" in only:
            results["stream"] = bench_stream(tmp, 6_000 if quick else 30_000)
        if "tensor" in only:
            sizes = [1 << 10, 64 << 10, 1 << 20, 16 << 20] + ([] if quick else [64 << 20])
            results["tensor"] = bench_tensor(tmp, sizes, 5 if quick else 11)
        if "floats" in only:  # the float32 part of throughput alone
            results["float32_tensors"] = bench_float_tensors(tmp, 16, 8 if quick else 32)
        if "throughput" in only:
            results["throughput"] = bench_throughput(tmp, 16, 8 if quick else 32, 20_000 if quick else 100_000,
                                                     100_000 if quick else 500_000)
        if "rss" in only:
            results["rss"] = bench_rss(tmp, 0.25 if quick else 2.0)
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
