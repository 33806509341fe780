"""The report: the machine, one table per workload with asynclog's ratio to each peer, and the goals, met or not.

Ratios are asynclog's figure divided by the peer's: "1/12" means asynclog's is twelve times smaller,
"2.1x" twice as large. Caller figures: p50/p99/mean of each logging call; "blocked" is the sum of the calls
plus the final close; "durable" is the close plus an fsync of every file the peer wrote (asynclog and the
sync floor fsync in their close already). "growth" is the probe's peak RSS during the workload above its RSS
after the peer was opened; "helpers" is the peak summed RSS of the processes the probe started.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shutil

import psutil

from asynclog.bench._runner import Cell
from asynclog.bench.workloads import WORKLOADS
from asynclog.config import Config

__all__ = ["machine", "versions", "table", "goals", "report", "FLAT_MIB"]

# asynclog holds at most ``queue_batches`` batches of ``batch_bytes`` in the probe (staging memory is shared
# and allocated up front, so it is in the baseline); allow as much again for the allocator.
_cfg = Config()
FLAT_MIB = 2 * _cfg.queue_batches * _cfg.batch_bytes / 2**20

_PACKAGES = ("asynclog", "torch", "msgspec", "zstandard", "tensorboard", "wandb", "loguru", "psutil")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = "GPU present" if shutil.which("nvidia-smi") else "no GPU"
    mem = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()}-core {cpu}, {mem:.0f} GiB, {gpu}, Python {platform.python_version()}"


def versions() -> str:
    found = []
    for name in _PACKAGES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} missing")
    return ", ".join(found)


# --- formatting ------------------------------------------------------------------------------------------
def _num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if x == 0:
        return f"0{unit}"
    if abs(x) >= 1000:
        return f"{x:,.0f}{unit}"
    return f"{x:.3g}{unit}"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    if r < 1:
        return f"1/{1 / r:.3g}" if r > 0 else "0"
    return f"{r:.3g}x"


def table(cells: list[Cell], scale: str) -> str:
    """One markdown table per workload."""
    out = []
    for workload in dict.fromkeys(c.workload for c in cells):
        rows = [c for c in cells if c.workload == workload]
        ours = next((c for c in rows if c.peer == "asynclog" and c.status == "ok"), None)
        out.append(f"### {WORKLOADS[workload].title(scale)}\n")
        out.append("| peer | how | p50 µs | p99 µs | mean µs | blocked s | durable s | disk | probe peak / growth MiB "
                   "| helpers MiB | asynclog ÷ peer: mean · blocked · durable · disk · growth |")
        out.append("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|")
        for c in rows:
            if c.status == "timeout" and "calls" in c.figures:
                f = c.figures
                peak = f"{f['rss_peak_mib']:.0f} / {f['rss_growth_mib']:.1f} before close" if "rss_peak_mib" in f else "-"
                out.append(f"| {c.name} | {c.how} | {_num(f.get('p50_us'))} | {_num(f.get('p99_us'))} | "
                           f"{_num(f.get('mean_us'))} | > {_num(f.get('blocked_s_min'))} | **timeout**: {c.note} "
                           f"| - | {peak} | - | - |")
                continue
            if c.status != "ok":
                out.append(f"| {c.name} | {c.how} | **{c.status}**: {c.note} | | | | | | | | |")
                continue
            f = c.figures
            ratios = "(reference)" if c is ours else "-"
            if ours is not None and c is not ours:
                o = ours.figures
                ratios = " · ".join(fmt_ratio(ratio(o.get(k), f.get(k)))
                                    for k in ("mean_us", "blocked_s", "durable_s", "bytes", "rss_growth_mib"))
            helpers = f"{f['helper_peak_mib']:.0f} ({f['helpers']})" if f.get("helpers") else "none"
            peak = f"{f['rss_peak_mib']:.0f} / {f['rss_growth_mib']:.1f}" if "rss_peak_mib" in f else "-"
            durable = f.get("durable_s", f.get("wall_s") if workload == "demo" else None)
            out.append(f"| {c.name} | {c.how} | {_num(f.get('p50_us'))} | {_num(f.get('p99_us'))} | "
                       f"{_num(f.get('mean_us'))} | {_num(f.get('blocked_s'))} | {_num(durable)} | "
                       f"{_bytes(f.get('bytes'))} | {peak} | {helpers} | {ratios} |")
        if workload == "demo":
            out.append("\n(demo: \"blocked s\" is the time inside DetailedLogger's calls, run close included; "
                       "\"durable s\" is the probe's whole wall time until its logs are on disk: compare the two "
                       "rows for the overhead. p50/p99/mean are asynclog's own calls, from the log footers)")
        out.append("")
    return "\n".join(out)


# --- goals ---------------------------------------------------------------------------------------------
def _get(cells: list[Cell], workload: str, peer: str) -> Cell | None:
    return next((c for c in cells if c.workload == workload and c.peer == peer), None)


def goals(cells: list[Cell]) -> list[tuple[str, bool | None, str]]:
    """Each goal as (statement, met: True/False/None when it could not be measured, the figures)."""
    found = []

    def compare(workload: str, peer: str, key: str, bound: float, statement: str, unit: str) -> None:
        ours, theirs = _get(cells, workload, "asynclog"), _get(cells, workload, peer)
        if ours is None and theirs is None:
            return  # workload not run
        if ours is None or theirs is None or ours.status != "ok" or theirs.status != "ok":
            why = "; ".join(f"{c.name}: {c.status}" for c in (ours, theirs) if c is not None and c.status != "ok")
            found.append((statement, None, f"not measured ({why or 'peer not run'})"))
            return
        a, b = ours[key], theirs[key]
        r = ratio(a, b)
        found.append((statement, r is not None and r <= bound,
                      f"asynclog {_num(a)} {unit} vs {_num(b)} {unit}: {fmt_ratio(r)}"))

    for peer, name, bound in (("stdlib", "stdlib QueueHandler", 1 / 10), ("tensorboard", "TensorBoard", 1 / 100),
                              ("wandb", "wandb offline", 1 / 100), ("loguru", "loguru", 1 / 100)):
        compare("events", peer, "mean_us", bound, f"events: caller cost per event <= {fmt_ratio(bound)} of {name}'s",
                "µs")
    for workload in ("tokens", "tensors"):
        compare(workload, "sync", "blocked_s", 1 / 10,
                f"{workload}: caller-blocked time <= 1/10 of the synchronous msgspec+zstd floor's", "s")
    for workload in ("events", "tokens", "tensors"):
        compare(workload, "sync", "bytes", 1.0,
                f"{workload}: bytes on disk <= the synchronous floor's at zstd level {_cfg.zstd_level}", "B")

    ours = [c for c in cells if c.peer == "asynclog" and c.workload != "demo" and c.status == "ok"]
    if ours:
        worst = max(ours, key=lambda c: c["rss_growth_mib"])
        others = []
        for peer in ("naive", "loguru"):
            for c in cells:
                if c.peer == peer and c.status == "ok" and c.workload != "demo":
                    others.append(f"{c.name} {c.workload} +{c['rss_growth_mib']:.0f}")
        found.append((f"probe RSS flat: asynclog's growth <= {FLAT_MIB:.0f} MiB in every workload",
                      worst["rss_growth_mib"] <= FLAT_MIB,
                      f"asynclog at most +{worst['rss_growth_mib']:.1f} MiB ({worst.workload}); "
                      + (", ".join(others) + " MiB" if others else "naive/loguru not measured")))
    return found


def report(cells: list[Cell], scale: str, command: str) -> str:
    lines = [f"command: `{command}`", f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
             f"machine: {machine()}", f"versions: {versions()}", "", table(cells, scale), "### goals", ""]
    for statement, met, figures in goals(cells):
        mark = {True: "MET", False: "NOT MET", None: "NOT MEASURED"}[met]
        lines.append(f"- **{mark}** {statement}: {figures}")
    return "\n".join(lines) + "\n"
