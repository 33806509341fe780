"""Real torch.distributed jobs (gloo on CPU): one run folder, one shard per rank, read back as one run; a
killed rank leaves the others intact; asynclog itself calls no collective."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import asynclog

RANK = textwrap.dedent("""
    import os, signal, sys, torch, torch.distributed as dist, asynclog
    out, rank, world, init, doomed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    run = asynclog.start(out, name="probe")  # rank and world size come from the process group
    for step in range(5):
        run.event("step", step=step, value=rank * 100 + step)
    run.tensor("E_batch/S", torch.arange(10, dtype=torch.float32) + rank)
    tokens = run.stream("tokens")
    for i in range(70):
        tokens.append(sequence_id=rank * 1000 + i, tokens=torch.full((3,), rank * 1000 + i))
    if rank == doomed:
        run.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    run.close()
    print(run.path, flush=True)
""")


def _job(tmp_path, world: int, doomed: int = -1) -> list[subprocess.CompletedProcess]:
    init = tmp_path / "pg_init"
    procs = [subprocess.Popen([sys.executable, "-c", RANK, str(tmp_path / "logs"), str(rank), str(world), str(init),
                               str(doomed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(world)]
    return [(proc, *proc.communicate(timeout=180)) for proc in procs]


@pytest.mark.parametrize("world", [2, 4])
def test_every_rank_writes_its_shard_of_one_run(tmp_path, world):
    for proc, out, err in _job(tmp_path, world):
        assert proc.returncode == 0, err[-3000:]
    folder = tmp_path / "logs" / "probe"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"] + [f"rank-{r:05d}.alog" for r in range(world)]
    with asynclog.open(folder) as log:
        assert log.complete and log.ranks == list(range(world))
        events = list(log.events(name="step"))
        assert sorted((e["rank"], e["data"]["step"]) for e in events) == [(r, s) for r in range(world) for s in range(5)]
        assert [e["time"] for e in events] == sorted(e["time"] for e in events)
        assert all(e["data"]["value"] == e["rank"] * 100 + e["data"]["step"] for e in events)
        for rank in range(world):
            assert torch.equal(log.tensor("E_batch/S", rank=rank), torch.arange(10, dtype=torch.float32) + rank)
            assert log.shard(rank).header["rank"] == rank and log.shard(rank).header["world_size"] == world
        rows = list(log.rows("tokens"))
        assert len(rows) == 70 * world
        assert all(row["sequence_id"] // 1000 == row["rank"] for row in rows)
        assert all(torch.equal(row["tokens"], torch.full((3,), row["sequence_id"])) for row in rows)
        frame = log.to_pandas("tokens")
        assert sorted(frame["rank"].unique()) == list(range(world)) and len(frame) == 70 * world


def test_a_killed_rank_leaves_the_run_incomplete_and_the_others_intact(tmp_path):
    results = _job(tmp_path, 2, doomed=1)
    assert results[0][0].returncode == 0, results[0][2][-3000:]  # rank 0 did not hang on its dead peer
    assert results[1][0].returncode == -9
    with asynclog.open(tmp_path / "logs" / "probe") as log:
        assert not log.complete
        assert len(log.problems) == 1 and log.problems[0].startswith("rank 1: incomplete")
        assert [e["data"]["step"] for e in log.events(name="step") if e["rank"] == 0] == list(range(5))
        assert [e["data"]["step"] for e in log.events(name="step") if e["rank"] == 1] == list(range(5))  # flushed
        assert log.shard(0).complete


def test_ranks_need_a_shared_name(tmp_path):
    with pytest.raises(asynclog.LogInputError, match="name="):
        asynclog.start(tmp_path, rank=1, world_size=2)
    with pytest.raises(asynclog.LogInputError, match="rank must be"):
        asynclog.start(tmp_path, name="x", rank=2, world_size=2)



def test_ranks_of_one_node_share_a_staging_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    runs = [asynclog.start(tmp_path, name="node", rank=r, world_size=8) for r in range(2)]
    try:
        assert {run.config.staging_bytes for run in runs} == {96 << 20}  # 8 x 96 MiB = 768 MiB for the node
        assert runs[0]._channel.pool.capacity == 96 << 20
        explicit = asynclog.start(tmp_path, name="mine", rank=0, world_size=8, config={"staging_bytes": 64 << 20})
        assert explicit.config.staging_bytes == 64 << 20  # a value the user set is kept
        explicit.close()
    finally:
        for run in runs:
            run.close()


def test_ls_and_show_take_a_run_folder_as_one_run(tmp_path):
    results = _job(tmp_path, 2, doomed=1)
    assert results[0][0].returncode == 0, results[0][2][-3000:]
    listed = subprocess.run([sys.executable, "-m", "asynclog", "ls", str(tmp_path / "logs"), "--json"],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert len(rows) == 1 and rows[0]["path"].endswith("probe") and rows[0]["status"] == "incomplete"
    assert "rank 1" in rows[0]["reason"]
    shown = subprocess.run([sys.executable, "-m", "asynclog", "show", str(tmp_path / "logs" / "probe")],
                           capture_output=True, text=True, timeout=60)
    assert "incomplete: rank 1" in shown.stdout, shown.stdout + shown.stderr


def test_a_run_name_used_again_leaves_the_first_runs_manifest_alone(tmp_path):
    with asynclog.start(tmp_path, name="job", rank=0, world_size=2) as run:
        run.event("first")
    manifest = (tmp_path / "job" / "manifest.json").read_bytes()
    with pytest.raises(FileExistsError):
        asynclog.start(tmp_path, name="job", rank=0, world_size=2)
    assert (tmp_path / "job" / "manifest.json").read_bytes() == manifest
