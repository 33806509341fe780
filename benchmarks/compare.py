"""asynclog against what a user would pick instead: the full set, one subprocess per peer, a table of ratios.

    python benchmarks/compare.py                      # the whole set (about 15 minutes on 2 cores)
    python benchmarks/compare.py --only events        # one workload
    python benchmarks/compare.py --only tensors,sync,torch_save   # one workload, two peers and asynclog
    python benchmarks/compare.py --short              # the short set `asynclog bench` runs
    python benchmarks/compare.py --markdown out.md    # also write the report as markdown

Peers come with `pip install asynclog[bench]`; those not installed are reported missing. The runner and the
adapters live in the package (asynclog/bench) so `asynclog bench --full` runs the same thing, and
benchmarks/bench_core.py measures what this does not on the same adapters and workloads.
"""

from __future__ import annotations

import argparse
import sys

from asynclog.bench import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="comma-separated workloads (events,tokens,tensors,demo) and peers (sync,stdlib,...)")
    parser.add_argument("--short", action="store_true", help="the short set instead of the full one")
    parser.add_argument("--markdown", default=None, help="also write the report to this file")
    args = parser.parse_args()
    args.full = not args.short
    args.command_line = " ".join(["python benchmarks/compare.py", *sys.argv[1:]])
    sys.exit(main(args))
