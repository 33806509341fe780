"""How long `asynclog sweep` and `asynclog.scan` take over a folder of many small real runs.

    .venv/bin/python benchmarks/bench_sweep.py                    # 1,000 runs
    .venv/bin/python benchmarks/bench_sweep.py --runs 1000 10000  # each size in turn (10,000 takes ~2 min to make)
    .venv/bin/python benchmarks/bench_sweep.py --keep DIR          # make the runs in DIR and leave them there

Runs are made once per size, by DetailedLogger at level standard (one tiny batch each, so each run has its
summary, config sidecar, header frame, records and footer), all on one writer process. Timed: `scan` in this
process (list and DataFrame), and the console commands `sweep`, `sweep --csv` and `ls` as subprocesses
(interpreter start included), each the best of ``--repeat``: from each folder's index (`asynclog/index.py`),
while it is first built (`*_first_*`: the index files are removed before each try) and without it
(`*_no_index_*`). Goals: `asynclog sweep` over 1,000 runs < 2 s (issue 8), over 10,000 < 1 s (issue 9).
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's asynclog, also for the subprocesses (cwd=ROOT)

from asynclog import DetailedLogger  # noqa: E402
from asynclog.tools.analysis import scan  # noqa: E402
from asynclog.tools.index import INDEX_NAME, RECENT_NS  # noqa: E402


def make_runs(out: str, count: int) -> float:
    """``count`` complete probe runs under ``out``; returns the seconds it took."""
    config = {"detailed_logging": {"enabled": True, "level": "standard", "output_directory": out, "max_files": 0}}
    logger = DetailedLogger(config)
    batch = {"sequences": torch.ones(4, 2, 12, dtype=torch.long), "attention_masks": torch.ones(4, 2, 12),
             "prompt_lens": [4] * 4, "advantages": torch.zeros(4, 2), "rewards": torch.rand(4, 2)}
    begin = time.perf_counter()
    for i in range(count):
        logger.log_run_start(f"/ckpts/sweep/step_{i}", config)
        logger.log_phase_start("phase1_sum_X")
        logger.log_phase_end("phase1_sum_X")
        logger.log_batch_data("U_batch", batch)
        logger.log_ground_truth_results({"deltaH_true": 1e-4 * i, "diagnostics": {"ESS": 1.0 + i % 7, "w_max": 2.0}})
        logger.finalize_log({"deltaH1": 2e-4 * i, "bars_dot": 0.5, "learning_rate": 1e-5})
    return time.perf_counter() - begin


def best_of(repeat: int, action, setup=None) -> float:
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        begin = time.perf_counter()
        action()
        times.append(time.perf_counter() - begin)
    return min(times)


def command(*args: str):
    def run() -> None:
        subprocess.run([sys.executable, "-m", "asynclog", *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)

    return run


def drop_indexes(out: str):
    def drop() -> None:
        for root, _, names in os.walk(out):
            if INDEX_NAME in names:
                os.unlink(os.path.join(root, INDEX_NAME))

    return drop


def measure(out: str, count: int, repeat: int) -> dict:
    made = make_runs(out, count)
    time.sleep(RECENT_NS / 1e9)  # the index does not keep runs modified a moment ago
    rows = scan(out, as_frame=False, index=False)
    assert len(rows) == count and all(r["status"] == "complete" for r in rows), "runs were not all made"
    assert scan(out, as_frame=False) == rows, "the index changed a row"
    return {
        "runs": count,
        "make_seconds": round(made, 2),
        "scan_list_no_index_seconds": round(best_of(repeat, lambda: scan(out, as_frame=False, index=False)), 3),
        "scan_list_seconds": round(best_of(repeat, lambda: scan(out, as_frame=False)), 3),
        "scan_frame_seconds": round(best_of(repeat, lambda: scan(out)), 3),
        "cli_sweep_no_index_seconds": round(best_of(repeat, command("sweep", out, "--no-index")), 3),
        "cli_sweep_first_seconds": round(best_of(repeat, command("sweep", out), drop_indexes(out)), 3),
        "cli_sweep_seconds": round(best_of(repeat, command("sweep", out)), 3),
        "cli_sweep_csv_seconds": round(best_of(repeat, command("sweep", out, "--csv", "--sort", "ESS")), 3),
        "cli_ls_seconds": round(best_of(repeat, command("ls", out)), 3),
        "cli_empty_folder_seconds": round(best_of(repeat, command("sweep", empty_folder(out))), 3),  # fixed cost
    }


def empty_folder(out: str) -> str:
    path = out.rstrip(os.sep) + "_empty"
    os.makedirs(path, exist_ok=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[1000], help="folder sizes to time (runs each)")
    parser.add_argument("--repeat", type=int, default=3, help="timings per measurement; the best is reported")
    parser.add_argument("--keep", default=None, help="make the runs under this folder and keep them")
    args = parser.parse_args()
    results = []
    for count in args.runs:
        if args.keep:
            results.append(measure(os.path.join(args.keep, f"runs_{count}"), count, args.repeat))
            continue
        with tempfile.TemporaryDirectory() as tmp:
            results.append(measure(os.path.join(tmp, "runs"), count, args.repeat))
    json.dump({"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "results": results},
              sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
