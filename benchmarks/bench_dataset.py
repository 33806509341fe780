"""How fast ``asynclog export DIR --dataset OUT`` and a DuckDB query over the dataset are, against reading the
same runs with the Python reader into pandas.

    .venv/bin/python benchmarks/bench_dataset.py                       # 1 M tokens (~1 min on 2 cores)
    .venv/bin/python benchmarks/bench_dataset.py --tokens 10000000     # the 10 M-token figures
    .venv/bin/python benchmarks/bench_dataset.py --keep DIR            # make the runs in DIR and leave them there
    .venv/bin/python benchmarks/bench_dataset.py --runs 10000 --tokens 20000000 --checkpoints 10   # many runs

The runs: ``--checkpoints`` runs (``step_000.alog``, ...), each one ``tokens/E_batch`` stream of synthetic
sequences (``--length`` tokens on average) with ``tokens`` (int64), ``token_logprobs`` and ``rb_entropies``
(float32) per token, written through ``asynclog.start`` as a probe writes them; together ``--tokens`` tokens.
With ``--runs`` more than ``--checkpoints``, the other runs are copies of those (``step_003_00042.alog`` of
``step_003``), made cheaply: the bytes of the checkpoint's run with its header frame written again with another
start time (``created``, a float of the same encoded size), so each copy is a run of its own identity
(``dataset.run_identity`` hashes the header frame) and its checkpoint's rows.

Each measurement runs in its own subprocess (imports not timed; peak RSS is the child's, imports included):

- ``export``: ``export_dataset(DIR, OUT)``; MB/s of ``.alog`` read and token rows/s written;
- ``reader``: every run's ``Log.tokens("E_batch")`` into a pandas DataFrame, one run at a time, the same data;
- ``duckdb``: mean token entropy per checkpoint over the dataset (``connect(OUT)``, the views of ``asynclog query``);
- ``pandas``: the same aggregate with pandas over the Python reader (every run's frame, concatenated, grouped);
- ``query``: ``asynclog query DATASET SQL`` as a user runs it, a whole process: its wall time, imports included.

Memory (Linux): ``peak MiB`` is the child's peak RSS during the timed work (imports included, about the same
in every child), ``grew MiB`` that peak less the RSS just before it.

The two aggregates are checked equal before anything is printed. Prints a table of ratios, then JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's asynclog, also for the subprocesses (cwd=ROOT)

SQL = "SELECT checkpoint, avg(rb_entropies) AS mean_entropy FROM tokens GROUP BY checkpoint ORDER BY checkpoint"


# --- the runs -----------------------------------------------------------------------------------------------
def make_runs(out: str, tokens: int, checkpoints: int, length: int, runs: int) -> float:
    """The runs under ``out`` (see the module docstring); returns the seconds it took."""
    begin = time.perf_counter()
    made = _write_runs(out, tokens // max(runs, checkpoints), checkpoints, length)
    for k in range(max(runs - checkpoints, 0)):
        _copy_run(made[k % checkpoints], os.path.join(out, f"step_{k % checkpoints:03d}_{k:05d}.alog"), k)
    return time.perf_counter() - begin


def _copy_run(path: str, to: str, k: int) -> None:
    """A copy of the run at ``path`` whose header frame says it started ``k + 1`` ms later: another identity."""
    from asynclog import _format as fmt
    from asynclog._ondisk import first_frame

    first = first_frame(path)
    meta = fmt.decode_meta(first[fmt.PREAMBLE_SIZE + fmt.HEADER_SIZE:-4])
    meta["created"] += (k + 1) / 1000
    again = fmt.log_start(fmt.encode_meta(meta))
    assert len(again) == len(first), "the header frame's size changed"  # the footer's offsets must hold
    with open(path, "rb") as f, open(to, "xb") as out:
        out.write(again + f.read()[len(first):])


def _write_runs(out: str, per_run: int, checkpoints: int, length: int) -> list[str]:
    """One run per checkpoint through ``asynclog.start``; their paths."""
    import torch

    import asynclog

    g = torch.Generator().manual_seed(0)
    paths = []
    for k in range(checkpoints):
        with asynclog.start(out, name=f"step_{k:03d}") as run:
            stream = run.stream("tokens/E_batch", chunk_rows=64)
            written, i = 0, 0
            while written < per_run:
                n = min(per_run - written, length // 2 + int(torch.randint(0, length, (), generator=g)))
                stream.append(sequence_id=i, tokens=torch.randint(0, 151_000, (n,), generator=g),
                              token_logprobs=-torch.rand(n, generator=g),
                              rb_entropies=torch.rand(n, generator=g) * (1 + k))  # each checkpoint its own mean
                written, i = written + n, i + 1
        paths.append(run.path)
    return paths


def log_bytes(logs: str) -> int:
    from asynclog.tools.analysis import find_logs

    return sum(os.path.getsize(p) for p in find_logs(logs))


# --- one measurement per subprocess -------------------------------------------------------------------------
def _export(logs: str, dataset: str) -> dict:
    from asynclog.tools.dataset import export_dataset

    parts = export_dataset(logs, dataset)
    return {"parts": len(parts), "rows": _dataset_rows(dataset)}


def _dataset_rows(dataset: str) -> int:
    import pyarrow.dataset as ds

    return ds.dataset(os.path.join(dataset, "table=tokens"), partitioning="hive").count_rows()


def _frames(logs: str):
    import asynclog
    from asynclog.tools.analysis import find_logs

    for path in find_logs(logs):
        with asynclog.open(path) as log:
            yield log.header.get("name"), log.tokens("E_batch")


def _reader(logs: str, dataset: str) -> dict:
    return {"rows": sum(len(frame) for _, frame in _frames(logs))}


def _duckdb(logs: str, dataset: str) -> dict:
    from asynclog.tools.dataset import connect

    return {"result": [list(r) for r in connect(dataset).sql(SQL).fetchall()]}


def _pandas(logs: str, dataset: str) -> dict:
    import pandas as pd

    frame = pd.concat([f[["rb_entropies"]].assign(checkpoint=name) for name, f in _frames(logs)], ignore_index=True)
    means = frame.groupby("checkpoint")["rb_entropies"].mean().sort_index()
    return {"result": [[c, float(m)] for c, m in means.items()]}


ADAPTERS = {"export": _export, "reader": _reader, "duckdb": _duckdb, "pandas": _pandas}


def measure_query(dataset: str) -> dict:
    """``asynclog query`` as a user runs it: one process, its wall time (imports included)."""
    begin = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "asynclog", "query", dataset, SQL, "--csv"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - begin
    if done.returncode != 0:
        raise SystemExit(f"query failed:\n{done.stderr[-3000:]}")
    return {"seconds": seconds, "peak_mib": 0, "grew_mib": 0, "lines": len(done.stdout.splitlines())}


def child(adapter: str, logs: str, dataset: str) -> None:
    import asynclog.tools.dataset  # noqa: F401  (imports are not what is timed: every child makes the same ones)
    import duckdb  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import torch  # noqa: F401  (the reader makes tensors)

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak so far is the imports'; start it again from here (Linux >= 4.0)
    before = _status_mib("VmRSS")
    begin = time.perf_counter()
    found = ADAPTERS[adapter](logs, dataset)
    seconds = time.perf_counter() - begin
    peak = _status_mib("VmHWM")
    print(json.dumps({"seconds": seconds, "peak_mib": round(peak), "grew_mib": round(peak - before), **found}))


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024  # kB


def measure(adapter: str, logs: str, dataset: str) -> dict:
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", adapter, logs, dataset], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{adapter} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


# --- the figures ----------------------------------------------------------------------------------------------
def run_all(logs: str, dataset: str, args) -> dict:
    made = make_runs(logs, args.tokens, args.checkpoints, args.length, args.runs)
    size = log_bytes(logs)
    got = {name: measure(name, logs, dataset) for name in ADAPTERS}
    got["query"] = measure_query(dataset)
    runs = max(args.runs, args.checkpoints)
    assert got["export"]["rows"] == got["reader"]["rows"] == args.tokens // runs * runs
    assert got["query"]["lines"] == 1 + args.checkpoints
    for (c1, m1), (c2, m2) in zip(got["duckdb"]["result"], got["pandas"]["result"], strict=True):
        assert c1 == c2 and abs(m1 - m2) <= 1e-6 * abs(m2), (c1, m1, c2, m2)
    mb = size / 1e6
    return {"tokens": got["reader"]["rows"], "runs": runs, "checkpoints": args.checkpoints, "files": _files(dataset),
            "log_mb": round(mb, 1),
            "make_seconds": round(made, 2), **{name: _figures(found, mb) for name, found in got.items()}}


def _files(dataset: str) -> dict:
    return {table: sum(len(files) for _, _, files in os.walk(os.path.join(dataset, f"table={table}")))
            for table in ("runs", "tokens")}


def _figures(found: dict, mb: float) -> dict:
    seconds = found["seconds"]
    out = {"seconds": round(seconds, 3), "peak_mib": found["peak_mib"], "grew_mib": found["grew_mib"]}
    if "rows" in found:  # export and reader read every .alog and give every token row
        out.update(log_mb_per_s=round(mb / seconds, 1), rows_per_s=round(found["rows"] / seconds))
    return out


def _thousands(value) -> str:
    return "" if value is None else f"{value:,}"


def table(result: dict) -> str:
    e, r, d, p, q = (result[k] for k in ("export", "reader", "duckdb", "pandas", "query"))
    lines = [f"{result['tokens']:,} tokens in {result['runs']} runs of {result['checkpoints']} checkpoints, "
             f"{result['log_mb']} MB of .alog; dataset files: {result['files']}",
             f"{'':32}{'seconds':>9}{'MB/s':>8}{'rows/s':>12}{'peak MiB':>10}{'grew MiB':>10}",
             *(f"{label:32}{f['seconds']:9.2f}{f.get('log_mb_per_s', ''):>8}{_thousands(f.get('rows_per_s')):>12}"
               f"{f['peak_mib']:10}{f['grew_mib']:10}"
               for label, f in [("export --dataset", e), ("Python reader -> pandas", r),
                                ("DuckDB: mean entropy per ckpt", d), ("pandas over the reader: same", p),
                                ("asynclog query (whole process)", q)]),
             f"export --dataset takes {e['seconds'] / r['seconds']:.2f}x the time of reading the runs into pandas",
             f"DuckDB over the dataset: {p['seconds'] / d['seconds']:.1f}x faster than pandas over the reader, "
             f"its memory grew {d['grew_mib']} MiB against {p['grew_mib']} MiB"]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(*sys.argv[2:5])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1_000_000, help="tokens in all runs together")
    parser.add_argument("--checkpoints", type=int, default=4, help="runs, one checkpoint each")
    parser.add_argument("--runs", type=int, default=0, help="runs in all: copies of the checkpoints' runs")
    parser.add_argument("--length", type=int, default=512, help="mean tokens per sequence")
    parser.add_argument("--keep", default=None, help="make the runs and the dataset under this folder and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or tmp
        result = run_all(os.path.join(where, "logs"), os.path.join(where, "dataset"), args)
    print(table(result))
    json.dump({"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "result": result},
              sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
