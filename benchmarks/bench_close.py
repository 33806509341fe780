"""What ``run.close()`` costs the probe, this checkout against another (the fsync of a log's frames before its
footer, issue 21, against the commit before it), each variant in its own process, alternating.

Each process starts ``--runs`` plain runs in a row in one folder (the writer process started once, as in a sweep),
logs ``--events`` events in each and times ``run.close()`` (which returns once the writer has written the footer
and fsynced). Reported: the median and 90th percentile of close per variant, over every run of every repeat, and
this ÷ other.

    .venv/bin/python benchmarks/bench_close.py --asynclog PATH [--runs 30] [--events 200] [--repeats 3]
        [--dir DIR]     where the logs go (default: a temporary folder under /tmp): the disk whose fsync is timed
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def child(directory: str, runs: int, events: int) -> dict:
    import asynclog

    closes = []
    for n in range(runs):
        run = asynclog.start(directory, name=f"run{n}")
        for i in range(events):
            run.event("step", i=i, loss=1.0 / (i + 1))
        began = time.perf_counter()
        run.close()
        closes.append(time.perf_counter() - began)
    asynclog.shutdown()
    return {"closes": closes, "package": os.path.dirname(asynclog.__file__)}


def spawn(package: str | None, args) -> dict:
    env = dict(os.environ)
    if package:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package, env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="bench_close_", dir=args.dir) as directory:
        out = subprocess.run([sys.executable, __file__, "--child", directory, str(args.runs), str(args.events)],
                             env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(json.dumps(child(argv[1], int(argv[2]), int(argv[3]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--asynclog", required=True, help="a checkout whose asynclog package is the other variant")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args(argv)
    variants = {"this": None, "other": os.path.abspath(args.asynclog)}
    closes: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.repeats):
        for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
            found = spawn(variants[name], args)
            closes[name] += found["closes"]
            print(f"repeat {r}: {name} from {found['package']}", file=sys.stderr)
    print("| variant | close median (ms) | close p90 (ms) |\n|---|--:|--:|")
    for name, times in closes.items():
        print(f"| {name} | {statistics.median(times) * 1e3:.2f} | {statistics.quantiles(times, n=10)[-1] * 1e3:.2f} |")
    print(f"this ÷ other, median: {statistics.median(closes['this']) / statistics.median(closes['other']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
