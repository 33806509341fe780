"""What ``run.tensor`` costs the caller for CPU float32 tensors of 4 KiB to 64 MiB, against two floors measured
side by side in the same process run. Prints one table.

    .venv/bin/python benchmarks/bench_tensor_sizes.py [--repeats 5]

Floors:
- warm memcpy: ``np.copyto`` into one destination, again and again (it stays in the CPU's caches);
- ring memcpy: ``np.copyto`` into successive slots of a prefaulted 256 MiB mapping, which is what any logger
  that hands bytes to another process through a ring must do (each copy lands in memory not in cache).

Both thread CPU time (robust on a shared machine) and wall time are given, per call, best of ``--repeats``.
Goal (issue 10): the caller's time at most 1.5x a memcpy at every size from 4 KiB to 64 MiB.
"""

from __future__ import annotations

import argparse
import mmap
import sys
import tempfile
import time

import numpy as np
import torch

import asynclog

SIZES = [4 << 10, 64 << 10, 512 << 10, 4 << 20, 64 << 20]
RING = 256 << 20


def per_call_us(call, calls: int, repeats: int) -> tuple[float, float]:
    """(thread CPU µs, wall µs) per call, each the best of ``repeats`` rounds of ``calls`` calls."""
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.thread_time_ns(), time.perf_counter_ns()
        for i in range(calls):
            call(i)
        cpu.append((time.thread_time_ns() - c) / calls / 1e3)
        wall.append((time.perf_counter_ns() - w) / calls / 1e3)
    return min(cpu), min(wall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    ring = np.frombuffer(mmap.mmap(-1, RING), np.uint8)
    ring[::4096] = 1  # prefaulted, as the staging pool is
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run = asynclog.start(tmp, name="sizes", config={"compression": "raw"})
        run.tensor("warm", torch.zeros(1 << 20))
        run.flush()
        for nbytes in SIZES:
            tensor = torch.randn(nbytes // 4)
            source = tensor.numpy().view(np.uint8)
            hot = np.empty(nbytes, np.uint8)
            slots = RING // nbytes
            calls = max(2, min(1000, RING // nbytes // 4))  # a quarter of the pool: no call waits for the writer

            def logged(i: int) -> None:
                run.tensor("t", tensor)

            def ring_copy(i: int) -> None:
                offset = (i % slots) * nbytes
                np.copyto(ring[offset : offset + nbytes], source)

            rows.append((nbytes, per_call_us(lambda i: np.copyto(hot, source), calls, args.repeats),
                         per_call_us(ring_copy, calls, args.repeats),
                         _logged_us(run, logged, calls, args.repeats)))
        run.close()
    print(f"run.tensor on CPU float32 tensors, per call, best of {args.repeats} (thread CPU µs / wall µs)")
    print(f"{'size':>9} {'warm memcpy':>15} {'ring memcpy':>15} {'run.tensor':>17} {'÷ ring (CPU)':>13} "
          f"{'÷ warm (CPU)':>13}")
    for nbytes, warm, ring_copy, logged in rows:
        print(f"{nbytes:>9} {warm[0]:>7.1f}/{warm[1]:<7.1f} {ring_copy[0]:>7.1f}/{ring_copy[1]:<7.1f} "
              f"{logged[0]:>8.1f}/{logged[1]:<8.1f} {logged[0] / ring_copy[0]:>13.2f} {logged[0] / warm[0]:>13.2f}")
    return 0


def _logged_us(run, call, calls: int, repeats: int) -> tuple[float, float]:
    """Like ``per_call_us``, with a flush between rounds (outside the timing) so each round finds the pool empty."""
    best_cpu, best_wall = float("inf"), float("inf")
    for _ in range(repeats):
        run.flush()
        cpu, wall = per_call_us(call, calls, 1)
        best_cpu, best_wall = min(best_cpu, cpu), min(best_wall, wall)
    return best_cpu, best_wall


if __name__ == "__main__":
    sys.exit(main())
