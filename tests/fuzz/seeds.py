"""Seed corpora for the fuzz targets, cut from real runs: ``python tests/fuzz/seeds.py OUT``.

Writes real runs under ``OUT/runs`` (the demo probe through DetailedLogger, a plain run with events, a tensor
of two pieces, every filter and a stream with a lookup column, a run folder of two ranks, and a copy of a log
cut mid-frame), sweeps them (each folder's index) and exports them as a dataset, then cuts one corpus folder per
target out of those files (``OUT/corpus/<target>/``) and keeps the files the targets build on (``OUT/base/``).
Nothing here is committed: the corpora are made again wherever the fuzzer runs.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import time
import warnings

import torch

import asynclog
from asynclog import _format as fmt
from asynclog.tools.analysis import scan
from asynclog.tools.dataset import STATE, export_dataset
from asynclog.tools.index import INDEX_NAME, RECENT_NS

WORDS = {"column": "words", "keys": "ids", "table": "names", "key": "id", "value": "name"}
SMALL_STAGING = {"staging_bytes": 1 << 20}  # pieces of 256 KiB: a tensor of 320 KB is stored in two


def plain_run(folder: str) -> str:
    """Events of every kind of value, tensors through each filter (one in two pieces), a stream with a lookup."""
    with asynclog.start(folder, name="plain", config=SMALL_STAGING, metadata={"seed": "fuzz"}) as run:
        run.event("step", step=1, loss=0.25, nan=float("nan"), nested={"a": [1, 2, {"b": None}]}, text="héllo")
        run.event("note", type_="text", values=list(range(20)))
        run.tensor("zeros", torch.zeros(80_000))  # two pieces, zstd
        run.tensor("ramp", torch.linspace(0, 1, 40_000))  # shuffle then zstd, when it pays
        run.tensor("noise", torch.randn(64, generator=torch.Generator().manual_seed(0)))  # raw
        run.tensor("ids", torch.arange(12, dtype=torch.int64).reshape(3, 4))
        run.tensor("half", torch.ones(5, dtype=torch.bfloat16))
        rows = run.stream("rows", chunk_rows=2, lookups=[WORDS])
        rows.extend(lengths=[2, 3, 0], ids=torch.tensor([[1, 2, 0], [3, 3, 4], [0, 0, 0]]), n=[2, 3, 0])
        names = run.stream("names", chunk_rows=1)
        names.append(id=[1, 2], name=["one", "two"])
        names.append(id=3, name="three")
    return run.path


def rank_runs(folder: str) -> str:
    """A run folder of two ranks, written side by side in this process."""
    runs = [asynclog.start(folder, name="job", rank=rank, world_size=2) for rank in (0, 1)]
    for rank, run in enumerate(runs):
        run.event("step", step=rank)
        run.tensor("w", torch.full((3,), float(rank)))
        run.close()
    return os.path.join(folder, "job")


def demo_run(folder: str) -> None:
    """The demo probe, one checkpoint at the debug level: summary, config sidecar, sequences, tokens."""
    subprocess.run([sys.executable, "-m", "asynclog", "demo", "--size", "tiny", "--checkpoints", "1",
                    "--level", "debug", "--out", folder], check=True, stdout=subprocess.DEVNULL)


def cut_copy(log: str, folder: str) -> str:
    """A copy of ``log`` cut in the middle of a frame, as a crash leaves it."""
    os.makedirs(folder, exist_ok=True)
    cut = os.path.join(folder, "cut.alog")
    with open(log, "rb") as f:
        data = f.read()
    with open(cut, "wb") as f:
        f.write(data[: len(data) * 2 // 3])
    return cut


# --- cutting corpora out of the runs ------------------------------------------------------------------------
def frames_of(path: str) -> list[tuple[fmt.FrameHeader, bytes]]:
    """Every intact frame of a log, with its bytes as stored."""
    with open(path, "rb") as f:
        data = f.read()
        return [(h, data[h.offset : h.end]) for h in fmt.walk_frames(f) if isinstance(h, fmt.FrameHeader)]


def chunk_input(frame: bytes, header: fmt.FrameHeader) -> bytes:
    """A chunk as the ``chunk`` target takes it: meta length (u32), meta, raw body."""
    from asynclog._filters import unfilter

    meta = frame[fmt.HEADER_SIZE : fmt.HEADER_SIZE + header.meta_len]
    stored = frame[fmt.HEADER_SIZE + header.meta_len : -fmt.SUFFIX_SIZE]
    return struct.pack("<I", len(meta)) + meta + unfilter(header.filter, header.itemsize, stored, header.raw_len)


def put(corpus: str, target: str, data: bytes) -> None:
    folder = os.path.join(corpus, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
        f.write(data)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def cut_corpora(runs: str, dataset: str, corpus: str) -> None:
    logs = sorted(glob.glob(os.path.join(runs, "**", "*.alog"), recursive=True))
    for log in logs:
        put(corpus, "log", read(log))
        put(corpus, "log_sealed", read(log))
        for header, frame in frames_of(log):
            put(corpus, "frame", frame)
            if header.kind == fmt.FrameKind.CHUNK:
                put(corpus, "chunk", chunk_input(frame, header))
            if header.kind == fmt.FrameKind.FOOTER:
                put(corpus, "footer", frame[fmt.HEADER_SIZE : fmt.HEADER_SIZE + header.meta_len])
    sidecars = {"summary": "*_summary.json", "manifest": "manifest.json", "index": INDEX_NAME,
                "config": "*.yaml"}
    for target, pattern in sidecars.items():
        for path in glob.glob(os.path.join(runs, "**", pattern), recursive=True):
            put(corpus, target, read(path))
    for path in glob.glob(os.path.join(os.path.dirname(asynclog.__file__), "configs", "*.yaml")):
        put(corpus, "config", read(path))
    put(corpus, "dataset_state", read(os.path.join(dataset, STATE)))


def keep_bases(runs: str, base: str) -> None:
    """The files targets build on: a plain log (``plain.alog``), the demo's log, and the two ranks' shards."""
    os.makedirs(base, exist_ok=True)
    shutil.copy(os.path.join(runs, "plain", "plain.alog"), os.path.join(base, "plain.alog"))
    demo = glob.glob(os.path.join(runs, "demo", "*", "*.alog"))[0]
    shutil.copy(demo, os.path.join(base, "demo.alog"))
    for shard in glob.glob(os.path.join(runs, "ranks", "job", "rank-*.alog")):
        shutil.copy(shard, os.path.join(base, os.path.basename(shard)))


def settle(folder: str) -> None:
    """Wait until every file below ``folder`` is older than ``RECENT_NS``: the index keeps no row of a run whose
    files changed more recently (they may change again), so a sweep right after the runs would write none."""
    newest = max(os.stat(os.path.join(root, name)).st_mtime_ns
                 for root, _, names in os.walk(folder) for name in names)
    wait = (newest + RECENT_NS - time.time_ns()) / 1e9
    if wait > 0:
        time.sleep(wait + 0.05)


def make(out: str) -> None:
    runs, corpus, base, dataset = (os.path.join(out, name) for name in ("runs", "corpus", "base", "dataset"))
    for folder in (runs, corpus, base, dataset):
        shutil.rmtree(folder, ignore_errors=True)
    log = plain_run(os.path.join(runs, "plain"))
    rank_runs(os.path.join(runs, "ranks"))
    demo_run(os.path.join(runs, "demo"))
    cut_copy(log, os.path.join(runs, "cut"))
    settle(runs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan(runs, as_frame=False)  # writes each folder's index
        export_dataset(os.path.join(runs, "demo"), dataset)
    cut_corpora(runs, dataset, corpus)
    keep_bases(runs, base)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/fuzz/seeds.py OUT")
    make(sys.argv[1])
