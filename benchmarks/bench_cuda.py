"""The CUDA snapshot path on a GPU: what ``run.tensor`` costs the caller, and device-to-host throughput against a
plain pinned-memory ``copy_(non_blocking=True)`` measured in the same run. Prints JSON and a summary table.

    .venv/bin/python benchmarks/bench_cuda.py [--max-mib 1024] [--repeats 5]

Goals (issue 10): the call returns in <= 50 us up to the staging pool's size, independent of size; throughput
>= 80 % of the plain pinned copy. Exits 2 (and prints why) when no CUDA device is present.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import torch

import asynclog


def caller_us(run, tensor, repeats: int) -> float:
    """Median time for ``run.tensor`` to return (the copy itself goes on asynchronously)."""
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter_ns()
        run.tensor("t", tensor)
        times.append((time.perf_counter_ns() - start) / 1e3)
        run.flush()  # let the pool drain, so each call finds room
    return statistics.median(times)


def logged_gbps(run, tensor, repeats: int) -> float:
    """Bytes per second from the first call until the writer has them (device -> pool -> file)."""
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


def _median_us(step, repeats: int = 200) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        step()
        times.append((time.perf_counter_ns() - start) / 1e3)
    torch.cuda.synchronize()
    return statistics.median(times)


def call_breakdown(run, nbytes: int) -> dict:
    """What each step of a CUDA ``run.tensor`` call costs on its own, to see where the caller's time goes."""
    tensor = torch.randn(nbytes // 4, device="cuda")
    flat = tensor.reshape(-1).view(torch.uint8)
    pool = run._stager.pool_tensor()[4096 : 4096 + nbytes]  # page-locked by the run's first CUDA tensor
    torch_pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def device_and_stream():
        with torch.cuda.device(tensor.device):
            torch.cuda.current_stream(tensor.device)

    def event_record():
        torch.cuda.Event().record()

    def whole_call():
        run.tensor("breakdown", tensor)
        run.flush()

    steps = {"device+stream": device_and_stream, "event+record": event_record,
             "copy_to_pool": lambda: pool.copy_(flat, non_blocking=True),
             "copy_to_torch_pinned": lambda: torch_pinned.copy_(flat, non_blocking=True),
             "flush_alone": run.flush}
    row = {name: _median_us(step) for name, step in steps.items()}
    row["call+flush"] = _median_us(whole_call, 50)
    row["pool_is_pinned"] = bool(pool.is_pinned())
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-mib", type=int, default=1024, help="largest tensor, in MiB")
    parser.add_argument("--repeats", type=int, default=5, help="calls per size")
    parser.add_argument("--staging-mib", type=int, default=256, help="the run's staging pool, in MiB")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_cuda: no CUDA device here; nothing measured", file=sys.stderr)
        return 2
    sizes = [1 << 10]
    while sizes[-1] * 16 <= args.max_mib << 20:
        sizes.append(sizes[-1] * 16)
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "staging_mib": args.staging_mib,
               "sizes": []}
    with tempfile.TemporaryDirectory() as tmp:
        run = asynclog.start(tmp, name="cuda", config={"staging_bytes": args.staging_mib << 20, "compression": "raw"})
        run.tensor("warm", torch.ones(1024, device="cuda"))
        run.flush()
        results["breakdown_us"] = {n: call_breakdown(run, n) for n in (1 << 10, 4 << 20)}
        for nbytes in sizes:
            tensor = torch.randn(nbytes // 4, device="cuda")
            row = {"bytes": nbytes, "caller_us": caller_us(run, tensor, args.repeats),
                   "logged_GBps": logged_gbps(run, tensor, args.repeats),
                   "pinned_copy_GBps": pinned_gbps(tensor, args.repeats)}
            row["throughput_ratio"] = row["logged_GBps"] / row["pinned_copy_GBps"]
            results["sizes"].append(row)
            del tensor
        run.close()
    print(json.dumps(results, indent=2))
    for nbytes, row in results["breakdown_us"].items():
        print(f"breakdown at {nbytes} bytes (median µs): " + ", ".join(
            f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    print(f"\n{results['gpu']}: run.tensor on CUDA tensors (staging pool {args.staging_mib} MiB)")
    print(f"{'size':>10} {'caller µs':>10} {'logged GB/s':>12} {'pinned GB/s':>12} {'ratio':>6}")
    for row in results["sizes"]:
        print(f"{row['bytes']:>10} {row['caller_us']:>10.1f} {row['logged_GBps']:>12.2f} "
              f"{row['pinned_copy_GBps']:>12.2f} {row['throughput_ratio']:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
