"""The workload a simulated power loss cuts: run as ``python crash_workload.py ROOT`` under ``strace -f``.

Real runs of every kind that write under ROOT: two plain runs (events, tensors and a stream; a durable flush, then a
close), two DetailedLogger
runs in one output folder (config YAML, summary, the folder's README), the two ranks of a job (its manifest), a
dataset export of the probe's folder (its parts, its state) and an ``ls`` of it (its index). Each step that
promises durability marks its return with an ``access`` of ``/asynclog-mark/N`` (a failing call strace records
in order with the package's own calls, in this process's thread), and the last line on stdout is JSON naming,
for each mark, what it promised:

    [[mark, [[path, kind], ...]], ...]    kind: "flushed" (the log's bytes so far), "closed" (the whole log),
                                          "replaced" (the file's version now, whole)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time

import torch

import asynclog
from asynclog import DetailedLogger
from asynclog.tools import index
from asynclog.cli import main as cli
from asynclog.tools.dataset import STATE, export_dataset

MARK = "/asynclog-mark/"
promises: list = []


def mark(*promised: tuple[str, str]) -> None:
    os.access(f"{MARK}{len(promises)}", os.F_OK)
    promises.append([len(promises), [list(p) for p in promised]])


def plain_runs(root: str) -> None:
    for n, folder in enumerate(("plain/deep", "plain")):
        run = asynclog.start(os.path.join(root, folder), name=f"plain{n}")
        for i in range(40):
            run.event("step", i=i, loss=1.0 / (i + 1), note="x" * (i * 7))
        run.tensor("weights", torch.arange(300 * (n + 1), dtype=torch.float32))
        tokens = run.stream("tokens", chunk_rows=16)
        for i in range(40):
            tokens.append(sequence_id=i, tokens=torch.arange(i % 7 + 1), logprobs=-torch.rand(i % 7 + 1))
        run.flush(durable=True)
        mark((run.path, "flushed"))
        for i in range(40, 90):
            run.event("step", i=i, loss=1.0 / (i + 1))
        run.tensor("weights", torch.randn(3000))  # incompressible: its frame spans sectors
        for i in range(40, 100):
            tokens.append(sequence_id=i, tokens=torch.arange(i % 5 + 1), logprobs=-torch.rand(i % 5 + 1))
        run.close()
        mark((run.path, "closed"))


def detailed_runs(root: str) -> str:
    out = os.path.join(root, "probe")
    config = {"detailed_logging": {"enabled": True, "level": "standard", "output_directory": out}}
    for n in range(2):
        logger = DetailedLogger(config)
        path = logger.log_run_start(f"/ckpts/step_{60 * (n + 1)}", config)
        stem = path.removesuffix(".alog")
        mark((stem + "_config.yaml", "replaced"), (os.path.join(out, "README.md"), "replaced"))
        logger.log_phase_start("estimate")
        logger.log_core_results({"deltaH1": 0.25 * n, "bars_dot": 0.5})
        logger.log_phase_end("estimate", {"seconds": 1.5})
        logger.finalize_log({"bars_dot": 0.5 + n})
        mark((path, "closed"), (stem + "_summary.json", "replaced"))
    return out


def ranked_run(root: str) -> None:
    runs = [asynclog.start(os.path.join(root, "ranked"), name="job", rank=r, world_size=2) for r in range(2)]
    for r, run in enumerate(runs):
        run.event("step", rank=r)
    for run in runs:
        run.close()
        mark((run.path, "closed"))
    mark((os.path.join(root, "ranked", "job", "manifest.json"), "replaced"))


def dataset(root: str, probe: str) -> None:
    out = os.path.join(root, "dataset")
    export_dataset(probe, out)
    mark((os.path.join(out, STATE), "replaced"))
    time.sleep(index.RECENT_NS / 1e9)  # ls keeps no run changed more recently in its index
    with contextlib.redirect_stdout(io.StringIO()):
        status = cli(["ls", probe])
    assert status == 0, status
    mark()


def main(root: str) -> None:
    plain_runs(root)
    probe = detailed_runs(root)
    ranked_run(root)
    dataset(root, probe)
    asynclog.shutdown()
    print(json.dumps(promises))


if __name__ == "__main__":
    main(os.path.realpath(sys.argv[1]))
