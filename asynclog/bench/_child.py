"""One peer on its workloads, in a process of its own: ``python -m asynclog.bench._child SPEC_JSON``.

The spec names the peer, a phase file, and for each workload its parameters, output directory and result
file. Workloads run one after the other, smallest first; for each, the child opens the peer, lets its
background start-up settle, takes the RSS baseline and resets the kernel's peak-RSS mark, drives the
workload, closes the peer, fsyncs every file it wrote, and writes its figures as JSON to the result file.
While a workload runs its name is in the phase file, so the parent, sampling helper processes from
outside, knows which workload their memory belongs to.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import time
import traceback

SETTLE_MAX_S = 1.0


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    failed = False
    for job in spec["jobs"]:
        try:
            result = measure(spec["peer"], job, lambda: _phase(spec["phase_file"], job["workload"]))
        except BaseException as exc:  # noqa: BLE001 - whatever broke is this workload's answer
            result = {"status": "error", "note": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()}
        _phase(spec["phase_file"], "")
        failed |= result.get("status") != "ok"
        with open(job["result"], "w", encoding="utf-8") as f:
            json.dump(result, f)
    return 1 if failed else 0


def _phase(path: str, workload: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(workload)
    os.replace(path + ".tmp", path)


def measure(peer: str, job: dict, begin=lambda: None) -> dict:
    """Drive peer ``peer`` through ``job`` (workload, params, directory, result) in this process; its figures.

    ``begin()`` marks the workload's start for the parent's sampling of helper processes: after the data is
    made, so that what importing torch starts (a CUDA build of torch runs ``ldconfig``) is not the peer's."""
    if job["workload"] == "demo":
        return _measure_demo(peer, job, begin)
    from asynclog.bench import peers
    from asynclog.bench.workloads import drive, prepare

    workload, params, directory = job["workload"], job["params"], job["directory"]
    state = prepare(workload, params)
    begin()
    adapter = peers.load(peer)()
    adapter.open(directory, workload)
    _settle()
    base, exact_peak = _rss(), _reset_peak()
    start = time.perf_counter()
    lat = drive(adapter, workload, params, state)
    t_close = time.perf_counter()
    calls = _call_figures(lat)
    # Should close never return (the parent kills a workload that runs too long), the calls still count.
    held = _peak()
    with open(job["result"], "w", encoding="utf-8") as f:
        json.dump({"status": "timeout", **calls, "close_started_s": t_close - start, "rss_base_mib": base / 2**20,
                   "rss_peak_mib": max(held, base) / 2**20, "rss_growth_mib": max(0, held - base) / 2**20}, f)
    adapter.close()
    close_s = time.perf_counter() - t_close
    t_sync = time.perf_counter()
    fsync_tree(directory)
    fsync_s = time.perf_counter() - t_sync
    wall_s = time.perf_counter() - start
    peak = _peak()
    nbytes, files = tree_size(directory)
    return {
        "status": "ok", **calls, "close_s": close_s, "blocked_s": calls["calls_s"] + close_s, "fsync_s": fsync_s,
        "durable_s": close_s + fsync_s, "wall_s": wall_s, "bytes": nbytes, "files": files,
        "rss_base_mib": base / 2**20, "rss_peak_mib": max(peak, base) / 2**20,
        "rss_growth_mib": max(0, peak - base) / 2**20, "peak_exact": exact_peak, "extra": adapter.stats(),
    }


def _call_figures(lat) -> dict:
    ns = sorted(lat)
    calls_s = sum(ns) / 1e9
    return {"calls": len(ns), "p50_us": _quantile(ns, 0.50) / 1e3, "p99_us": _quantile(ns, 0.99) / 1e3,
            "mean_us": calls_s / len(ns) * 1e6, "max_us": ns[-1] / 1e3, "calls_s": calls_s}


def _measure_demo(peer: str, job: dict, begin) -> dict:
    """Workload 4: the toy entropy probe (``asynclog.probe.toyprobe``) over a few checkpoints, logging through
    DetailedLogger at debug level, or with no logger ("off"). A first pass without a logger warms torch up
    and is not measured. Caller figures come from DetailedLogger's own count of the time spent in its calls
    and from the logs' footers (asynclog's per-call accounting)."""
    import glob

    import asynclog
    from asynclog.probe.logger import DetailedLogger
    from asynclog.probe.toyprobe import SIZES, build, perturbed, run_probe

    directory, params = job["directory"], job["params"]
    size = SIZES[params["size"]]
    model, tokenizer, prompts = build(size)
    begin()
    run_probe(model, tokenizer, prompts, size, logger=None)
    logger = None
    if peer != "off":
        settings = {"enabled": True, "level": "debug", "output_directory": directory, "max_files": 0}
        logger = DetailedLogger({"detailed_logging": settings}, tokenizer=tokenizer)
    checkpoints = [model] + [perturbed(model, i) for i in range(1, params["checkpoints"])]
    _settle()
    base, exact_peak = _rss(), _reset_peak()
    busy = 0.0
    start = time.perf_counter()
    for i, checkpoint in enumerate(checkpoints):
        run_probe(checkpoint, tokenizer, prompts, size, logger=logger, checkpoint_path=f"toy/step_{i}")
        if logger is not None:
            busy += logger.last_summary["logging_cost"]["probe_seconds"]
    wall_s = time.perf_counter() - start
    t_sync = time.perf_counter()
    fsync_tree(directory)
    fsync_s = time.perf_counter() - t_sync
    peak = _peak()
    nbytes, files = tree_size(directory)
    result = {"status": "ok", "wall_s": wall_s, "durable_s": wall_s + fsync_s, "fsync_s": fsync_s,
              "blocked_s": busy, "bytes": nbytes, "files": files, "rss_base_mib": base / 2**20,
              "rss_peak_mib": max(peak, base) / 2**20, "rss_growth_mib": max(0, peak - base) / 2**20,
              "peak_exact": exact_peak, "extra": {"checkpoints": len(checkpoints)}}
    calls = seconds = p50 = p99 = 0.0
    for path in sorted(glob.glob(os.path.join(directory, "**", "*.alog"), recursive=True)):
        with asynclog.open(path) as log:
            stats = log.stats
        calls += stats.get("calls", 0)
        seconds += stats.get("producer_seconds", 0.0)
        p50, p99 = max(p50, stats.get("producer_p50_us", 0.0)), max(p99, stats.get("producer_p99_us", 0.0))
    if calls:
        # p50/p99 are asynclog's own histogram (within 25 %), of its calls inside DetailedLogger's
        result.update(calls=int(calls), calls_s=seconds, mean_us=seconds / calls * 1e6, p50_us=p50, p99_us=p99)
    return result


# --- measuring -------------------------------------------------------------------------------------------
def _settle() -> None:
    """Wait until the probe's RSS stops moving: the peer's background start-up (wandb's service handshake)
    belongs in the baseline, not in the workload's growth. asynclog's staging pool is faulted in as it is
    used, so its pages count in the workload that uses them."""
    gc.collect()
    deadline = time.monotonic() + SETTLE_MAX_S
    last = _rss()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = _rss()
        if abs(now - last) < 1 << 20:
            return
        last = now


def fsync_tree(directory: str) -> None:
    """fsync every file and folder under ``directory``: what it takes for the peer's output to be durable."""
    for root, dirs, files in os.walk(directory):
        for name in files + [None]:
            path = os.path.join(root, name) if name else root
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:  # a socket or a file gone meanwhile
                continue
            try:
                os.fsync(fd)
            except OSError:
                pass
            finally:
                os.close(fd)


def tree_size(directory: str) -> tuple[int, int]:
    """Total size in bytes and number of the regular files under ``directory``."""
    total = count = 0
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            if os.path.isfile(path) and not os.path.islink(path):
                total += os.path.getsize(path)
                count += 1
    return total, count


def _quantile(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return 0.0
    return float(sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))])


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak since start, not since the baseline


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
