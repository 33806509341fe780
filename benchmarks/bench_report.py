"""What a report of a real-size debug run costs: its file size, the time to make it, and the time a browser
takes to open it, beside a blank page opened the same way.

    .venv/bin/python benchmarks/bench_report.py [--rounds 3] [--limits 1000,2048]

The run is the real probe's size at level debug: E 2048 x 1 and U 64 x 8 sequences, 150 generated tokens
each, per-token log-probs and entropies, importance weights, token texts from a byte-level tokenizer of
151,000 ids (``bench_token_texts.BytesTokenizer``: 1-12 random bytes each, so texts are mostly U+FFFD and
odd characters, the hard case for escaping and size). One report is made per ``--limits`` entry (sequences
kept a batch; 1000 is the default, 2048 keeps every sequence).

Opening is headless Chromium, a fresh profile each time: ``chromium --headless --dump-dom`` returns once the
page has loaded and its script has drawn the first page of sequences. Reported per page: the wall time of
that command (median over rounds, the pages interleaved), its ratio to the blank page's in the same round, and
the page's own ``performance.now()`` when its script finished drawing (``data-render-ms`` on ``<body>``).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_token_texts import BATCHES, BytesTokenizer, VOCAB, make_batch  # noqa: E402

from asynclog import DetailedLogger  # noqa: E402
from asynclog.tools import report


def debug_run(directory: str) -> str:
    """Log one run of the probe's size at level debug; its path."""
    config = {"detailed_logging": {"enabled": True, "level": "debug", "log_tokens": True, "max_files": 0,
                                   "output_directory": directory}}
    logger = DetailedLogger(config, tokenizer=BytesTokenizer())
    order = torch.randperm(VOCAB - 3, generator=torch.Generator().manual_seed(1)) + 3
    logger.log_run_start("bench/step_0")
    for i, (name, (B, G)) in enumerate(BATCHES.items()):
        batch, sequences = make_batch(B, G, i, "zipf", order)
        logger.log_batch_data(name, batch, sequences)
        if name == "E_batch":
            S = sequences["sequence_logprob"].reshape(-1)
            logger.log_importance_sampling_details(S, S + 0.1 * torch.randn(S.shape), S.neg(), S.neg())
    path = logger.finalize_log({})
    logger.close()
    return path


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        for folder in os.environ.get("PATH", "").split(os.pathsep):
            if os.access(os.path.join(folder, name), os.X_OK):
                return os.path.join(folder, name)
    sys.exit("bench_report: needs headless Chromium (Debian: apt-get install chromium)")


def open_page(path: str) -> tuple[float, int | None]:
    """Seconds ``chromium --dump-dom`` took, and the page's render time in ms (None for a page without one)."""
    with tempfile.TemporaryDirectory(prefix="bench-report-chromium-") as profile:
        began = time.perf_counter()
        done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               f"--user-data-dir={profile}", "--dump-dom", "file://" + path],
                              capture_output=True, text=True, timeout=300)
        seconds = time.perf_counter() - began
    if done.returncode != 0:
        sys.exit(f"bench_report: chromium failed on {path}: {done.stderr[-500:]}")
    found = re.search(r'data-render-ms="(\d+)"', done.stdout)
    return seconds, int(found.group(1)) if found else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limits", default="1000,2048", help="sequences kept a batch, one report each")
    args = parser.parse_args(argv)
    limits = [int(n) for n in args.limits.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_report_") as directory:
        began = time.perf_counter()
        run = debug_run(os.path.join(directory, "logs"))
        logged = time.perf_counter() - began
        pages = {"blank page": os.path.join(directory, "blank.html")}
        with open(pages["blank page"], "w", encoding="utf-8") as f:
            f.write("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>blank</body></html>")
        made = {}
        for limit in limits:
            out = pages[f"report, {limit} a batch"] = os.path.join(directory, f"report-{limit}.html")
            began = time.perf_counter()
            report.write_report(run, out, limit)
            made[out] = time.perf_counter() - began
        timings = {name: [] for name in pages}
        for r in range(args.rounds):
            names = list(pages)
            for name in names[r % len(names):] + names[: r % len(names)]:
                timings[name].append(open_page(pages[name]))
        print(table(run, logged, pages, made, timings, args.rounds))
    return 0


def table(run: str, logged: float, pages: dict, made: dict, timings: dict, rounds: int) -> str:
    lines = [f"report of a debug run (E 2048 x 1, U 64 x 8, 150 generated tokens; the .alog "
             f"{os.path.getsize(run) / 1e6:.1f} MB, logged in {logged:.1f} s), {rounds} rounds, {os.cpu_count()} CPUs, "
             f"Python {platform.python_version()}, {_chromium_version()}",
             "",
             f"{'page':<22} {'file MB':>8} {'make s':>7} {'open s':>7} {'÷ blank':>8} {'render ms':>10}"]
    blank = [s for s, _ in timings["blank page"]]
    for name, path in pages.items():
        seconds = [s for s, _ in timings[name]]
        rendered = [ms for _, ms in timings[name] if ms is not None]
        ratio = statistics.median(a / b for a, b in zip(seconds, blank))
        make = f"{made[path]:7.2f}" if path in made else f"{'-':>7}"
        lines.append(f"{name:<22} {os.path.getsize(path) / 1e6:8.2f} {make} {statistics.median(seconds):7.2f} "
                     f"{ratio:8.2f} {statistics.median(rendered) if rendered else '-':>10}")
    lines += ["",
              "make s: asynclog.tools.report.write_report (reading the run and writing the page); open s: wall time of",
              "chromium --headless --dump-dom, a fresh profile each time (median; ÷ blank: median ratio to the blank",
              "page in the same round); render ms: the page's performance.now() when its script had drawn the first",
              "page of sequences (median)."]
    return "\n".join(lines)


def _chromium_version() -> str:
    done = subprocess.run([chromium(), "--version"], capture_output=True, text=True, timeout=60)
    return done.stdout.strip() or "chromium"


if __name__ == "__main__":
    sys.exit(main())
