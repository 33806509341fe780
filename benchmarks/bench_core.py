"""Core pipeline benchmarks: what ``asynclog bench`` does not measure, on its peer adapters and workloads.

    .venv/bin/python benchmarks/bench_core.py              # the full workload sizes (minutes)
    .venv/bin/python benchmarks/bench_core.py --quick      # the short sizes (about a minute)
    .venv/bin/python benchmarks/bench_core.py --quick --only gate --json after.json --before before.json

One definition of each peer (``asynclog/bench/peers``: the sync floor, stdlib QueueHandler, torch.save) and of
each workload (``asynclog/bench/workloads``: the 10-field event, the 150-token row, the tensor snapshots)
serves both this script and ``asynclog bench``. Sections (``--only``):

  calls       the events and tokens workloads for asynclog, the sync floor and stdlib QueueHandler, each in
              its own subprocess: exactly ``asynclog bench [--full] --only events,tokens,sync,stdlib``
  gate        asynclog alone: a muted call (``run.at("debug")`` on a minimal run), an accepted ``event`` and
              one refused under policy ``error`` with the writer stopped
  tensor      ``run.tensor`` of 1 KiB .. 64 MiB (``TENSOR_SIZES``) against a ``clone`` of the same tensor
  floats      16 MiB float32 snapshots, first call until durable, against the torch.save adapter
  throughput  the events and tokens workloads with no pauses, first call until durable, against the floor
  rss         the probe's RSS growth while streaming token rows
  startup     a fresh process's ``import asynclog`` and first ``start``, against ``import torch``

Goals (benchmarks/RESULTS.md): event p50 <= 0.1x stdlib and <= 3x the floor; a row p50 <= 0.5x the floor's;
run.tensor <= 1.5x a clone; floats >= 1x torch.save; records and rows >= 0.8x the floor until durable;
RSS growth <= staging pool + 64 MiB. Prints JSON; ``--before OLD.json`` adds a before/after table (run the
script against the old checkout with ``--json OLD.json`` first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import psutil
import torch

import asynclog
from asynclog.bench import TENSOR_SIZES, WORKLOADS, event_fields, fsync_tree, load, measure, snapshots, token_row
from asynclog.bench import run as run_peers

AsyncLog, SyncFloor, StdlibQueue, TorchSave = (load(k) for k in ("asynclog", "sync", "stdlib", "torch_save"))
SECTIONS = ("calls", "gate", "tensor", "floats", "throughput", "rss", "startup")
_FIGURES = ("p50_us", "p99_us", "mean_us", "blocked_s")


def pct(values: list[int], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] / 1e3  # ns -> us


def timed_calls(call, n: int) -> list[int]:
    out = []
    clock = time.perf_counter_ns
    for i in range(n):
        t = clock()
        call(i)
        out.append(clock() - t)
    return out


def _opened(adapter, directory: str, workload: str):
    os.makedirs(directory, exist_ok=True)
    adapter.open(directory, workload)
    return adapter


def _events(n: int) -> list[dict]:
    import random

    rng = random.Random(0)
    return [event_fields(i, n, rng) for i in range(n)]


# --- sections ----------------------------------------------------------------------------------------------
def bench_calls(scale: str) -> dict:
    """Per-call figures of the events and tokens workloads, each peer in its own subprocess (the runner's)."""
    cells = run_peers(scale, peer_keys=["asynclog", "sync", "stdlib"], workload_keys=["events", "tokens"])
    out = {}
    for workload in ("events", "tokens"):
        ok = {c.peer: c.figures for c in cells if c.workload == workload and c.status == "ok"}
        out[workload] = {peer: {k: f[k] for k in _FIGURES} for peer, f in ok.items()}
        ours = ok.get("asynclog")
        for peer in ("sync", "stdlib"):
            if ours and peer in ok:
                out[workload][f"asynclog_over_{peer}"] = {k: ours[k] / ok[peer][k] for k in _FIGURES}
    return out


def bench_gate(tmp: str, n: int) -> dict:
    """A muted call, an accepted ``event`` and a refused one (policy ``error``, the writer stopped by SIGSTOP)."""
    fields = _events(n)
    muted = _opened(AsyncLog(level="minimal"), os.path.join(tmp, "muted"), "events")
    gated = timed_calls(lambda i: muted.run.at("debug").event("core_results", **fields[i]), n)
    muted.close()
    normal = _opened(AsyncLog(config={"policy": "error"}), os.path.join(tmp, "accepted"), "events")
    accepted = timed_calls(lambda i: normal.event("core_results", fields[i]), n)
    normal.close()
    full = _opened(AsyncLog(config={"policy": "error", "queue_batches": 2, "batch_records": 64}),
                   os.path.join(tmp, "refused"), "events")
    pid = full.run._channel.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        refused = []
        while len(refused) < n:  # fill the pipe and the queue, then time only refused calls
            start = time.perf_counter_ns()
            try:
                full.event("core_results", {**fields[len(refused)], "payload": "x" * 4000})
            except asynclog.QueueFullError:
                refused.append(time.perf_counter_ns() - start)
    finally:
        os.kill(pid, signal.SIGCONT)
    full.close()
    return {"muted_p50_us": pct(gated, 0.5), "accepted_p50_us": pct(accepted, 0.5),
            "refused_p50_us": pct(refused, 0.5), "refused_p99_us": pct(refused, 0.99)}


def bench_tensor(tmp: str, sizes: tuple[int, ...], reps: int) -> dict:
    """Caller latency of run.tensor with room in the pool, against x.clone() of the same tensor."""
    ours_adapter = _opened(AsyncLog(), os.path.join(tmp, "tensor"), "tensors")
    out = {}
    for nbytes in sizes:
        x = snapshots(nbytes, 1)[0]
        ours, copies = [], []
        for _ in range(reps):
            ours_adapter.run.flush()  # an empty pool (the writer has written it): measure the call, not the disk
            t = time.perf_counter_ns()
            ours_adapter.tensor("activations", x)
            ours.append(time.perf_counter_ns() - t)
            t = time.perf_counter_ns()
            x.clone()
            copies.append(time.perf_counter_ns() - t)
        out[_size(nbytes)] = {"asynclog_us": statistics.median(ours) / 1e3,
                              "clone_us": statistics.median(copies) / 1e3,
                              "ratio": statistics.median(ours) / statistics.median(copies)}
    ours_adapter.close()
    return out


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def _until_durable(adapter, directory: str, tensors: list, count: int) -> tuple[float, float]:
    """Seconds from opening, and from the first call, until every snapshot is on disk."""
    opened = time.perf_counter()
    _opened(adapter, directory, "tensors")
    t = time.perf_counter()
    for i in range(count):
        adapter.tensor("activations", tensors[i % len(tensors)])
    adapter.close()
    fsync_tree(directory)  # torch.save does not fsync; asynclog's close already did
    done = time.perf_counter()
    shutil.rmtree(directory)  # keep free space and page cache alike for every repeat
    return done - t, done - opened


def bench_floats(tmp: str, count: int, repeats: int = 3) -> dict:
    """``count`` float32 snapshots of the tensors workload's full size, first call until durable: asynclog
    against the torch.save adapter (a ``.pt`` per snapshot, then an fsync of each). The two alternate
    ``repeats`` times (disks drift); medians. ``with_start_s`` adds asynclog's ``start``."""
    nbytes = WORKLOADS["tensors"].params("full")["nbytes"]
    tensors = snapshots(nbytes, 4)
    saves, ours, with_start = [], [], []
    for rep in range(repeats):
        saves.append(_until_durable(TorchSave(), os.path.join(tmp, f"save{rep}"), tensors, count)[0])
        mine, started = _until_durable(AsyncLog(), os.path.join(tmp, f"asynclog{rep}"), tensors, count)
        ours.append(mine)
        with_start.append(started)
    gib = nbytes * count / 2**30
    torch_save, mine = statistics.median(saves), statistics.median(ours)
    return {"GiB": gib, "torch_save_GBps": gib / torch_save, "asynclog_GBps": gib / mine,
            "ratio": torch_save / mine, "ratios": [round(s / o, 3) for s, o in zip(saves, ours)],
            "with_start_s": statistics.median(with_start)}


def bench_throughput(tmp: str, scale: str) -> dict:
    """Records and token rows with no pauses, from the first call until durable (close and fsync included):
    asynclog against the sync floor, in this process. The rows are made inside the loop, alike for both."""
    sizes = {"records": ("events", {"count": 20 * WORKLOADS["events"].params(scale)["count"]}),
             "token_rows": ("tokens", {"sequences": 20 * WORKLOADS["tokens"].params(scale)["sequences"],
                                       "length": WORKLOADS["tokens"].params(scale)["length"]})}
    out = {}
    for kind, (workload, params) in sizes.items():
        items = params.get("count") or params["sequences"]
        params |= {"every": items, "pause_s": 0.0}
        rates = {}
        for peer in ("sync", "asynclog"):
            directory = os.path.join(tmp, f"{kind}-{peer}")
            os.makedirs(directory)
            job = {"workload": workload, "params": params, "directory": directory, "result": directory + ".json"}
            rates[f"{peer}_per_s"] = items / measure(peer, job)["wall_s"]
            shutil.rmtree(directory)
        out[kind] = {"items": items, **rates, "ratio": rates["asynclog_per_s"] / rates["sync_per_s"]}
    return out


def bench_rss(tmp: str, gib: float) -> dict:
    """Probe RSS growth while streaming ``gib`` of token rows (ids, log-probs, entropies) through asynclog."""
    proc = psutil.Process()
    g = torch.Generator().manual_seed(0)
    rows = [token_row(g) for _ in range(64)]
    row_bytes = sum(t.numel() * t.element_size() for t in rows[0])
    ours = _opened(AsyncLog(), os.path.join(tmp, "rss"), "tokens")
    ours.tensor("warm", torch.zeros(1))
    ours.run.flush(durable=True)
    before, peak = proc.memory_info().rss, 0
    for i in range(int(gib * 2**30 / row_bytes)):
        ours.row(i, *rows[i % 64])
        if i % 4096 == 0:
            peak = max(peak, proc.memory_info().rss)
    ours.close()
    growth = (peak - before) / 2**20
    budget = asynclog.Config().staging_bytes / 2**20 + 64
    return {"streamed_GiB": gib, "rss_growth_MiB": round(growth, 1), "budget_MiB": budget,
            "within_budget": growth <= budget}


def bench_startup(tmp: str) -> dict:
    """A fresh probe process that has imported torch (as a probe has): the first ``import asynclog`` plus
    ``start`` on the probe's thread (the writer starts in the background), that ``start`` alone, and the time
    until a first event is in the file (``flush``: the writer is up); against ``import torch``."""
    code = ("import time, torch; t0 = time.perf_counter(); import asynclog._session; t1 = time.perf_counter(); "
            "r = asynclog.start({tmp!r}, name='s{i}'); t2 = time.perf_counter(); r.event('x'); r.flush(); "
            "t3 = time.perf_counter(); print(t2 - t0, t2 - t1, t3 - t0); r.close()")
    runs = [[float(x) for x in subprocess.check_output([sys.executable, "-c", code.format(tmp=tmp, i=i)]).split()]
            for i in range(7)]
    torch_import = [float(subprocess.check_output([sys.executable, "-c",
                    "import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)"]))
                    for _ in range(3)]
    import_and_start, start, first_event = zip(*runs)
    return {"first_start_s": statistics.median(import_and_start), "start_alone_s": statistics.median(start),
            "first_event_written_s": statistics.median(first_event),
            "import_torch_s": statistics.median(torch_import)}


# --- before / after ----------------------------------------------------------------------------------------
def _flat(results: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in results.items():
        name = f"{prefix} {key}".strip()
        if isinstance(value, dict):
            out |= _flat(value, name)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


def before_after(before: dict, after: dict) -> str:
    """A markdown table of every figure both runs have: before, after, and the change in percent."""
    old, new = _flat(before), _flat(after)
    lines = ["| figure | before | after | change |", "|---|--:|--:|--:|"]
    for name in (n for n in new if n in old):
        change = f"{(new[name] / old[name] - 1) * 100:+.0f} %" if old[name] else "-"
        lines.append(f"| {name} | {old[name]:.3g} | {new[name]:.3g} | {change.replace('+0 %', '0 %')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the short workload sizes")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--before", default=None, help="an earlier --json file: print a before/after table")
    args = parser.parse_args()
    quick, only = args.quick, set(args.only.split(","))
    if only - set(SECTIONS):
        parser.error(f"unknown section(s) {', '.join(sorted(only - set(SECTIONS)))}; choose from {', '.join(SECTIONS)}")
    scale = "short" if quick else "full"
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        sections = {
            "calls": lambda: bench_calls(scale),
            "gate": lambda: bench_gate(tmp, 5_000 if quick else 20_000),
            "tensor": lambda: bench_tensor(tmp, TENSOR_SIZES[:-1] if quick else TENSOR_SIZES, 5 if quick else 11),
            "floats": lambda: bench_floats(tmp, 8 if quick else WORKLOADS["tensors"].params("full")["count"]),
            "throughput": lambda: bench_throughput(tmp, scale),
            "rss": lambda: bench_rss(tmp, 0.25 if quick else 2.0),
            "startup": lambda: bench_startup(tmp),
        }
        for name in SECTIONS:
            if name in only:
                results[name] = sections[name]()
    json.dump(results, sys.stdout, indent=2)
    print()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    if args.before:
        with open(args.before, encoding="utf-8") as f:
            print(before_after(json.load(f), results))


if __name__ == "__main__":
    main()
