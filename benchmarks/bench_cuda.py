"""The CUDA snapshot path on a GPU: what ``run.tensor`` costs the caller, and device-to-host throughput against a
plain pinned-memory ``copy_(non_blocking=True)`` measured in the same run. Prints JSON and a summary table.

    .venv/bin/python benchmarks/bench_cuda.py [--max-mib 1024] [--repeats 5] [--profile]

Per size it measures:

- caller µs, alone: the median time for ``run.tensor`` to return when the pipeline is idle (a flush between
  calls), so each call also wakes the threads that hand the copy on;
- caller µs, in a burst: the median over calls made back to back (as a probe logs a batch of tensors), as
  long as the burst fits in half the pool, so no call waits for the writer;
- device-to-host GB/s: from the first call of a burst until every copy has landed in the pool (what the
  GPU→host leg moves), against the same bytes through a plain pinned ``copy_`` in the same run;
- to-file GB/s: from the first call until the writer has everything (``flush``), which the writer's checksum
  and the disk bound, not the GPU.

Goals (issue 10): the call returns in <= 50 us up to the staging pool's size, independent of size; device-to-host
throughput >= 80 % of the plain pinned copy. Exits 2 (and prints why) when no CUDA device is present.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
import traceback

import torch

import asynclog


def _us_since(start_ns: int) -> float:
    return (time.perf_counter_ns() - start_ns) / 1e3


def caller_alone_us(run, tensor, repeats: int) -> float:
    """Median time for ``run.tensor`` to return with the pipeline idle before each call."""
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter_ns()
        run.tensor("t", tensor)
        times.append(_us_since(start))
        run.flush()
    return statistics.median(times)


def burst(run, tensor, calls: int) -> tuple[list[float], float]:
    """``calls`` back-to-back calls: each call's µs, and the seconds until every copy is in the pool."""
    run.flush()
    torch.cuda.synchronize()
    times, first = [], time.perf_counter()
    for _ in range(calls):
        start = time.perf_counter_ns()
        run.tensor("t", tensor)
        times.append(_us_since(start))
    run._stager.wait_copies()  # every event completed and handed on: the bytes are in host memory
    seconds = time.perf_counter() - first
    run.flush()
    return times, seconds


def to_file_gbps(run, tensor, repeats: int) -> float:
    """Bytes per second from the first call until the writer has them (device -> pool -> file)."""
    run.flush()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        run.tensor("t", tensor)
    run.flush()
    return tensor.nbytes * repeats / (time.perf_counter() - start) / 1e9


def pinned_gbps(tensor, repeats: int) -> float:
    """The floor: a plain non-blocking copy into page-locked host memory, synchronised."""
    host = torch.empty(tensor.nbytes, dtype=torch.uint8, pin_memory=True)
    flat = tensor.reshape(-1).view(torch.uint8)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        host.copy_(flat, non_blocking=True)
    torch.cuda.synchronize()
    return tensor.nbytes * repeats / (time.perf_counter() - start) / 1e9


def measure_size(run, nbytes: int, repeats: int, pool_bytes: int) -> dict:
    tensor = torch.randn(nbytes // 4, device="cuda")
    row = {"bytes": nbytes, "caller_alone_us": caller_alone_us(run, tensor, repeats)}
    calls = min(50, pool_bytes // 2 // nbytes)
    if calls >= 1:  # a burst that fits in half the pool: no call waits for the writer
        times, seconds = burst(run, tensor, calls)
        row.update(burst_calls=calls, caller_burst_us=statistics.median(times),
                   caller_burst_p90_us=sorted(times)[int(0.9 * (len(times) - 1))],
                   d2h_GBps=nbytes * calls / seconds / 1e9,
                   pinned_copy_GBps=pinned_gbps(tensor, calls))
        row["d2h_ratio"] = row["d2h_GBps"] / row["pinned_copy_GBps"]
    row["to_file_GBps"] = to_file_gbps(run, tensor, repeats)
    return row


def _median_us(step, repeats: int = 200) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        step()
        times.append(_us_since(start))
    torch.cuda.synchronize()
    return statistics.median(times)


def call_breakdown(run, nbytes: int) -> dict:
    """What each step of a CUDA ``run.tensor`` call costs on its own, to see where the caller's time goes.

    The pool slice used here is never read back: only the timings matter.
    """
    tensor = torch.randn(nbytes // 4, device="cuda")
    flat = tensor.reshape(-1).view(torch.uint8)
    pool = run._stager.pool_tensor()[4096 : 4096 + nbytes]  # page-locked by the run's first CUDA tensor
    torch_pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def device_and_stream():
        with torch.cuda.device(tensor.device):
            torch.cuda.current_stream(tensor.device)

    steps = {"current_device": torch.cuda.current_device, "device+stream": device_and_stream,
             "event_new+record": lambda: torch.cuda.Event().record(),
             "copy_to_pool": lambda: pool.copy_(flat, non_blocking=True),
             "copy_to_torch_pinned": lambda: torch_pinned.copy_(flat, non_blocking=True),
             "meta_checks": lambda: (tensor.detach().contiguous().reshape(-1).view(torch.uint8), list(tensor.shape)),
             "flush_alone": run.flush}
    row = {name: _median_us(step) for name, step in steps.items()}
    row["pool_is_pinned"] = bool(pool.is_pinned())
    return row


def profile_calls(run, nbytes: int, calls: int = 400) -> str:
    """cProfile of back-to-back calls (flushing every 50): the functions the caller's time goes to."""
    tensor = torch.randn(nbytes // 4, device="cuda")
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(calls):
        run.tensor("profiled", tensor)
        if i % 50 == 49:
            run.flush()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(18)
    return out.getvalue()


def _section(results: dict, key: str, compute):
    """Run one part of the benchmark and return what it measured; a failure is recorded under ``key`` (and None
    returned), and the other parts still run."""
    try:
        return compute()
    except Exception:  # noqa: BLE001 - a lent GPU is rare: report what failed and measure the rest
        results.setdefault("failures", {})[key] = traceback.format_exc()
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-mib", type=int, default=1024, help="largest tensor, in MiB")
    parser.add_argument("--repeats", type=int, default=5, help="calls per size")
    parser.add_argument("--staging-mib", type=int, default=256, help="the run's staging pool, in MiB")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of 4 KiB calls")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_cuda: no CUDA device here; nothing measured", file=sys.stderr)
        return 2
    sizes = [1 << 10]
    while sizes[-1] * 16 <= args.max_mib << 20:
        sizes.append(sizes[-1] * 16)
    pool_bytes = args.staging_mib << 20
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "staging_mib": args.staging_mib,
               "sizes": []}
    with tempfile.TemporaryDirectory() as tmp:
        run = asynclog.start(tmp, name="cuda", config={"staging_bytes": pool_bytes, "compression": "raw"})
        run.tensor("warm", torch.ones(1024, device="cuda"))
        run.flush()
        results["breakdown_us"] = _section(results, "breakdown_us",
                                           lambda: {n: call_breakdown(run, n) for n in (1 << 10, 4 << 20)})
        for nbytes in sizes:
            row = _section(results, f"size_{nbytes}", lambda: measure_size(run, nbytes, args.repeats, pool_bytes))
            if row:
                results["sizes"].append(row)
        profile = _section(results, "profile_4KiB", lambda: profile_calls(run, 4 << 10)) if args.profile else None
        run.close()
    print(json.dumps(results, indent=2))
    print_summary(results, args.staging_mib)
    if profile:
        print("\ncProfile, 400 back-to-back run.tensor calls of 4 KiB CUDA tensors:\n" + profile)
    return 1 if results.get("failures") else 0


def print_summary(results: dict, staging_mib: int) -> None:
    for nbytes, row in (results.get("breakdown_us") or {}).items():
        print(f"breakdown at {nbytes} bytes (median µs): " + ", ".join(
            f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    print(f"\n{results['gpu']}: run.tensor on CUDA tensors (staging pool {staging_mib} MiB)")
    print(f"{'size':>10} {'alone µs':>9} {'burst µs':>9} {'p90 µs':>8} {'D2H GB/s':>9} {'pinned GB/s':>11} "
          f"{'ratio':>6} {'file GB/s':>9}")
    for row in results["sizes"]:
        burst_cols = (f"{row['caller_burst_us']:>9.1f} {row['caller_burst_p90_us']:>8.1f} {row['d2h_GBps']:>9.2f} "
                      f"{row['pinned_copy_GBps']:>11.2f} {row['d2h_ratio']:>6.2f}") if "d2h_GBps" in row else \
            f"{'-':>9} {'-':>8} {'-':>9} {'-':>11} {'-':>6}"
        print(f"{row['bytes']:>10} {row['caller_alone_us']:>9.1f} {burst_cols} {row['to_file_GBps']:>9.2f}")


if __name__ == "__main__":
    sys.exit(main())
