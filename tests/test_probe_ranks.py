"""DetailedLogger in a job of several ranks: one run folder per run without a collective, each rank's rows
and tensors in its shard, reduced results once (rank 0), batch statistics merged exactly at read time.

The jobs are real gloo ranks on the CPU (as in test_ranks.py); the small checks run ranks side by side in
this process, passing ``rank=`` and ``world_size=``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

import asynclog
from asynclog import DetailedLogger
from asynclog.probe.batchstats import BatchView, batch_statistics
from asynclog._shards import merge_batch_statistics

BATCHES = """
import torch

def rank_batch(rank, B):
    g = torch.Generator().manual_seed(100 + rank)
    G, P, T = 2, 6, 20
    prompt_lens = torch.randint(2, P + 1, (B,), generator=g)
    gen_lens = torch.randint(1, T - P + 1, (B, G), generator=g)
    pos = torch.arange(T)
    mask = (pos >= P - prompt_lens[:, None, None]) & (pos < P + gen_lens[..., None])
    rewards = torch.rand(B, G, generator=g) + rank
    return {"sequences": torch.randint(3, 1000, (B, G, T), generator=g) * mask, "attention_masks": mask.long(),
            "prompt_lens": [P] * B, "rewards": rewards,  # the padded prompt width, as the probe fills it in
            "advantages": rewards - rewards.mean(1, keepdim=True)}

def rank_size(rank):
    return 3 + 2 * rank  # uneven on purpose: an average of averages would be wrong
"""
exec(BATCHES)  # rank_batch and rank_size, as the rank processes define them

RANK = BATCHES + """
import json, os, signal, sys, torch.distributed as dist
from asynclog import DetailedLogger
out, rank, world, init, doomed, broadcast, runs = sys.argv[1], *map(int, sys.argv[2:4]), sys.argv[4], *map(int, sys.argv[5:])
dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
config = {"detailed_logging": {"enabled": True, "level": "debug", "output_directory": out, "max_files": 0,
                               "log_tokens": True, "log_raw_tensors": True},
          "asynclog": {"staging_bytes": 4 << 20}}
logger = DetailedLogger(config, broadcast_name=bool(broadcast))
folders = []
for _ in range(runs):
    folders.append(logger.log_run_start("/ckpt/step_10"))
    logger.log_phase_start("phase0_sampling")
    logger.log_batch_data("U_batch", rank_batch(rank, rank_size(rank)))
    logger.log_phase_end("phase0_sampling")
    if rank == doomed:
        os.kill(os.getpid(), signal.SIGKILL)
    logger.log_ground_truth_results({"H_orig": 1.5, "deltaH_true": 0.125})
    logger.log_core_results({"bars_dot": 0.25})
    logger.finalize_log({"deltaH1": 0.5})
print(json.dumps(folders), flush=True)
"""

_LAUNCHER_VARS = ("ASYNCLOG_RUN_NAME", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_ERROR_FILE",
                  "SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT")


def _job(tmp_path, world: int, env: dict, doomed: int = -1, broadcast: bool = False, runs: int = 1) -> list:
    clean = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    procs = [subprocess.Popen([sys.executable, "-c", RANK, str(tmp_path / "logs"), str(rank), str(world),
                               str(tmp_path / "pg_init"), str(doomed), str(int(broadcast)), str(runs)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**clean, **env})
             for rank in range(world)]
    return [(proc, *proc.communicate(timeout=180)) for proc in procs]


def _concatenated(batches: list[dict]) -> dict:
    return {"sequences": torch.cat([b["sequences"] for b in batches]),
            "attention_masks": torch.cat([b["attention_masks"] for b in batches]),
            "prompt_lens": [n for b in batches for n in b["prompt_lens"]],
            "rewards": torch.cat([b["rewards"] for b in batches]),
            "advantages": torch.cat([b["advantages"] for b in batches])}


def _assert_statistics_equal(merged: dict, want: dict) -> None:
    for key, value in want.items():
        if isinstance(value, float) or (isinstance(value, list) and isinstance(value[0], float)):
            assert merged[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
        else:
            assert merged[key] == value, key


@pytest.fixture
def no_launcher(monkeypatch):
    for key in _LAUNCHER_VARS:
        monkeypatch.delenv(key, raising=False)


def _config(out, **settings) -> dict:
    return {"detailed_logging": {"enabled": True, "level": "standard", "output_directory": str(out), **settings},
            "asynclog": {"staging_bytes": 4 << 20}}


# --- the job: one run folder, every rank's data, reduced results once --------------------------------------
@pytest.mark.parametrize("world", [2, 4])
def test_every_rank_logs_into_one_run_folder_named_by_the_launcher(tmp_path, world, full):
    if world > 2 and not full:
        pytest.skip("4 ranks with --full")
    results = _job(tmp_path, world, {"TORCHELASTIC_RUN_ID": "job42"}, runs=2)
    for proc, _, err in results:
        assert proc.returncode == 0, err[-3000:]
    folders = [json.loads(out) for _, out, _ in results]
    assert all(f == folders[0] for f in folders)  # found by every rank on its own
    first, second = folders[0]
    assert os.path.basename(first) == "entropy_probe_torchrun-job42_step_10"
    assert os.path.basename(second) == "entropy_probe_torchrun-job42_step_10-1"  # the same checkpoint again
    assert sorted(os.listdir(first)) == sorted(["manifest.json", "config.yaml"]
                                               + [f"rank-{r:05d}{s}" for r in range(world)
                                                  for s in (".alog", "_summary.json")])
    with asynclog.open(first) as log:
        assert log.complete and log.ranks == list(range(world))
        for rank in range(world):
            shard, batch = log.shard(rank), rank_batch(rank, rank_size(rank))
            assert len(list(shard.rows("sequences/U_batch"))) == rank_size(rank) * 2
            assert len(list(shard.rows("tokens/U_batch"))) == rank_size(rank) * 2
            assert torch.equal(shard.tensor("U_batch/rewards"), batch["rewards"])
            assert [e["data"]["phase"] for e in shard.events(name="phase_end")] == ["phase0_sampling"]
        for name in ("core_results", "ground_truth"):  # reduced by the probe already: once, by rank 0
            assert [e["rank"] for e in log.events(name=name)] == [0]
        assert next(log.events(name="ground_truth"))["data"] == {"H_orig": 1.5, "deltaH_true": 0.125}
        merged = log.batch_statistics()["U_batch"]
    want = batch_statistics(BatchView(_concatenated([rank_batch(r, rank_size(r)) for r in range(world)]), "U"))
    _assert_statistics_equal(merged, want)
    with open(os.path.join(first, "rank-00001_summary.json")) as f:
        summary = json.load(f)
    assert summary["complete"] and summary["rank"] == 1 and "ground_truth" not in summary


def test_a_killed_rank_leaves_the_others_intact_and_the_run_incomplete(tmp_path):
    results = _job(tmp_path, 2, {}, doomed=1, broadcast=True)
    assert results[0][0].returncode == 0, results[0][2][-3000:]  # rank 0 did not wait for its dead peer
    assert results[1][0].returncode == -9
    [folder] = json.loads(results[0][1])
    assert os.path.basename(folder).startswith("entropy_probe_")  # rank 0's clock, broadcast once
    with asynclog.open(folder) as log:
        assert not log.complete
        assert len(log.problems) == 1 and log.problems[0].startswith("rank 1: incomplete")
        assert log.shard(0).complete
        assert len(list(log.shard(1).rows("sequences/U_batch"))) == rank_size(1) * 2  # flushed before the kill
        merged = log.batch_statistics()["U_batch"]
    assert merged["num_sequences"] == 2 * (rank_size(0) + rank_size(1))
    with open(os.path.join(folder, "rank-00001_summary.json")) as f:
        assert json.load(f)["complete"] is False  # written by rank 1's writer after the probe died


# --- names ---------------------------------------------------------------------------------------------------
def test_ranks_without_a_shared_name_or_a_process_group_get_an_error_naming_the_ways(tmp_path, no_launcher):
    for rank in (0, 1):
        logger = DetailedLogger(_config(tmp_path / "logs"), rank=rank, world_size=2)
        with pytest.raises(asynclog.LogInputError) as caught:
            logger.log_run_start("/ckpt/step_10")
        for way in ("run_name=", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "broadcast_name=True", "process group"):
            assert way in str(caught.value)
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("*.alog"))


def test_broadcast_name_without_a_process_group_leaves_no_run_folder(tmp_path, no_launcher):
    logger = DetailedLogger(_config(tmp_path / "logs"), rank=0, world_size=2, broadcast_name=True)
    with pytest.raises(asynclog.LogInputError, match="process group"):
        logger.log_run_start("/ckpt/step_10")
    assert [p for p in (tmp_path / "logs").rglob("*") if p.is_dir()] == []


def test_ranks_given_different_names_show_the_missing_shard(tmp_path, no_launcher, caplog):
    loggers = [DetailedLogger(_config(tmp_path / "logs"), rank=r, world_size=2, run_name=f"name{r}")
               for r in range(2)]
    folders = [logger.log_run_start("/ckpt/step_10") for logger in loggers]
    assert folders[0] != folders[1]
    with caplog.at_level(logging.WARNING, logger="asynclog.probe"):
        for logger in reversed(loggers):
            logger.finalize_log({})
    assert "no manifest.json from rank 0" in caplog.text  # rank 1 noticed it is alone in its folder
    with asynclog.open(folders[0]) as log:
        assert not log.complete and log.problems == ["rank 1: no shard rank-00001.alog"]


def test_a_run_name_used_again_is_an_error_not_a_merge(tmp_path, no_launcher, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    first = DetailedLogger(_config(tmp_path / "logs"), rank=0, world_size=2)
    folder = first.log_run_start("/ckpt/step_10")
    assert os.path.basename(folder) == "entropy_probe_slurm-777_step_10"
    first.finalize_log({})
    again = DetailedLogger(_config(tmp_path / "logs"), rank=0, world_size=2)  # a second job, same name
    with pytest.raises(asynclog.LogInputError, match="run_name"):
        again.log_run_start("/ckpt/step_10")
    with asynclog.open(folder) as log:
        assert log.shard(0).complete


def test_the_launchers_names_are_found_in_the_environment():
    from asynclog._ranks import job_name, launcher_name

    assert job_name({"TORCHELASTIC_RUN_ID": "abc", "SLURM_JOB_ID": "9"}) == "torchrun-abc"
    assert job_name({"TORCHELASTIC_RUN_ID": "none", "SLURM_JOB_ID": "9", "SLURM_STEP_ID": "0"}) == "slurm-9.0"
    assert job_name({"TORCHELASTIC_RUN_ID": "abc", "TORCHELASTIC_RESTART_COUNT": "2"}) == "torchrun-abc-restart2"
    assert job_name({"ASYNCLOG_RUN_NAME": "sweep7", "TORCHELASTIC_RUN_ID": "abc"}) == "sweep7"
    assert job_name({"TORCHELASTIC_RUN_ID": "none", "MASTER_PORT": "29500"}) is None  # shared by every job
    assert [launcher_name(env).source for env in ({"ASYNCLOG_RUN_NAME": "a"}, {"TORCHELASTIC_RUN_ID": "b"},
                                                  {"SLURM_JOB_ID": "9"})] == ["ASYNCLOG_RUN_NAME",
                                                                              "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"]


def _torchrun_env(rank: int, local_world: int = 2, restart: int = 0, **changed) -> dict:
    """What torchrun (torch 2.13, no --rdzv-id) gives rank ``rank`` of a launch of 2 ranks."""
    folder = "/tmp/torchelastic_twpyqxzo/none_f06mhsyz"
    local = rank % local_world
    return {"TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_RESTART_COUNT": str(restart), "RANK": str(rank),
            "WORLD_SIZE": "2", "LOCAL_RANK": str(local), "LOCAL_WORLD_SIZE": str(local_world),
            "TORCHELASTIC_ERROR_FILE": f"{folder}/attempt_{restart}/{local}/error.json", **changed}


def test_torchruns_launch_folder_names_a_launch_on_one_node_only():
    from asynclog._ranks import Placement, SharedName, torchrun_launch_name

    want = SharedName("torchrun-f06mhsyz", "TORCHELASTIC_ERROR_FILE")
    assert [torchrun_launch_name(Placement(r, 2), _torchrun_env(r)) for r in (0, 1)] == [want, want]
    assert torchrun_launch_name(Placement(1, 2), _torchrun_env(1, restart=1)).name == "torchrun-f06mhsyz-restart1"
    assert torchrun_launch_name(Placement(1, 2), _torchrun_env(1, local_world=1)) is None  # a folder per node
    assert torchrun_launch_name(Placement(0, 4), _torchrun_env(0)) is None  # not torchrun's world
    assert torchrun_launch_name(Placement(0, 2), _torchrun_env(0, TORCHELASTIC_ERROR_FILE="")) is None  # /dev/null
    assert torchrun_launch_name(Placement(0, 2), _torchrun_env(0, TORCHELASTIC_ERROR_FILE="/tmp/e.json")) is None


def test_rank_0_names_the_launch_in_the_store_without_waiting_and_a_rank_it_keeps_waiting_gives_up():
    import time

    from torch.distributed import HashStore

    from asynclog._ranks import agree_through_store

    store = HashStore()
    with pytest.raises(asynclog.LogInputError, match="rank 0 did not name the run.*within 0.2 s"):
        agree_through_store(store, 1, "asynclog/test/attempt_0", timeout=0.2)
    begin = time.monotonic()
    name = agree_through_store(store, 0, "asynclog/test/attempt_0", timeout=0.2)
    assert time.monotonic() - begin < 0.1
    assert agree_through_store(store, 1, "asynclog/test/attempt_0") == name
    assert agree_through_store(store, 0, "asynclog/test/attempt_1") != name  # a restart agrees anew


def test_ranks_of_a_process_group_without_a_launcher_name_agree_on_one_through_its_store(tmp_path):
    results = _job(tmp_path, 2, {}, runs=2)
    for proc, _, err in results:
        assert proc.returncode == 0, err[-3000:]
    folders = [json.loads(out) for _, out, _ in results]
    assert folders[0] == folders[1]
    first, again = folders[0]
    assert again == first + "-1"  # the same checkpoint again, in the same job
    for folder in folders[0]:
        with asynclog.open(folder) as log:
            assert log.complete and log.ranks == [0, 1]
            assert [log.shard(r).header["metadata"]["run_metadata"]["name_source"] for r in (0, 1)] == \
                ["process_group_store"] * 2


def test_ranks_on_both_sides_of_midnight_meet_in_one_folder(tmp_path):
    from datetime import datetime

    from asynclog.probe.layout import rank_run_paths

    template = "probe_{timestamp}_{date}_{checkpoint_name}"
    late = rank_run_paths(tmp_path, template, "/c/step_1", "standard", "job", 0, now=datetime(2025, 1, 15, 23, 59, 59))
    early = rank_run_paths(tmp_path, template, "/c/step_1", "standard", "job", 1, now=datetime(2025, 1, 16, 0, 0, 1))
    assert early.main == late.main and late.main.endswith("2025-01-15/probe_job_2025-01-15_step_1")
    assert early.summary.endswith("rank-00001_summary.json")


# --- retention and README ------------------------------------------------------------------------------------
def test_retention_counts_and_removes_a_run_folder_as_one_run(tmp_path, no_launcher):
    out = tmp_path / "logs"
    folders = []
    for job in ("a", "b", "c"):
        loggers = [DetailedLogger(_config(out, max_files=2), rank=r, world_size=2, run_name=job) for r in (1, 0)]
        folders.append([logger.log_run_start("/ckpt/step_10") for logger in loggers][0])
        for logger in loggers:
            logger.finalize_log({})
    assert not os.path.exists(folders[0])  # the oldest run: every shard, summary, manifest and its folder
    assert all(os.path.isdir(f) for f in folders[1:])
    day = os.path.dirname(folders[0])
    assert sorted(os.listdir(day)) == sorted(os.path.basename(f) for f in folders[1:])
    readme = (out / "README.md").read_text()
    assert "rank-NNNNN.alog" in readme and "manifest.json" in readme


# --- the merge itself ---------------------------------------------------------------------------------------
def test_merged_batch_statistics_equal_those_of_the_concatenated_batches():
    batches = [rank_batch(rank, rank_size(rank)) for rank in range(3)] + [rank_batch(7, 1)]
    per_rank = [{"batch": "U_batch", **batch_statistics(BatchView(b, "U"), aggregates=True)} for b in batches]
    merged = merge_batch_statistics(per_rank)
    want = batch_statistics(BatchView(_concatenated(batches), "U"))
    _assert_statistics_equal(merged, want)
    averaged = sum(s["avg_reward"] for s in per_rank) / len(per_rank)
    assert merged["avg_reward"] != pytest.approx(averaged)  # the data can tell an average of averages apart


def test_the_config_section_may_name_the_run_for_every_rank(tmp_path, no_launcher):
    logger = DetailedLogger(_config(tmp_path / "logs", run_name="sweep-a"), rank=0, world_size=2)
    folder = logger.log_run_start("/ckpt/step_3")
    assert os.path.basename(folder) == "entropy_probe_sweep-a_step_3"
    logger.finalize_log({})


def test_show_reads_rank_0s_summary_for_a_run_folder(tmp_path, no_launcher, capsys):
    loggers = [DetailedLogger(_config(tmp_path / "logs"), rank=r, world_size=2, run_name="job") for r in (0, 1)]
    folders = {logger.log_run_start("/ckpt/step_5") for logger in loggers}
    for logger in loggers:
        logger.log_core_results({"deltaH1": 0.125, "bars_dot": 2.5})
        logger.finalize_log({})
    [folder] = folders
    from asynclog import cli

    assert cli.main(["show", folder]) == 0
    out = capsys.readouterr().out
    assert "0.125" in out and "no summary sidecar" not in out


BAD_CHECKPOINT = """
import sys, torch.distributed as dist, asynclog
from asynclog import DetailedLogger
out, rank, init = sys.argv[1], int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
logger = DetailedLogger({"detailed_logging": {"enabled": True, "output_directory": out}}, broadcast_name=True)
try:
    logger.log_run_start(object())  # rank 0 fails naming the folder: the others must hear of it, not wait
    print("started")
except (asynclog.LogInputError, TypeError) as exc:
    print("raised", type(exc).__name__)
"""


def test_rank_0_failing_to_name_the_run_tells_the_others_instead_of_leaving_them_waiting(tmp_path, no_launcher):
    procs = [subprocess.Popen([sys.executable, "-c", BAD_CHECKPOINT, str(tmp_path / "logs"), str(rank),
                               str(tmp_path / "pg_init")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    try:
        outs = [proc.communicate(timeout=60)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert [out.split()[:1] for out in outs] == [["raised"], ["raised"]], outs


def test_a_name_used_again_on_another_day_starts_a_run_of_that_day(tmp_path):
    from datetime import datetime

    from asynclog.probe.layout import rank_run_paths

    template = "probe_{timestamp}_{checkpoint_name}"
    monday = [rank_run_paths(tmp_path, template, "/c/step_1", "standard", "sweep", r, now=datetime(2025, 1, 13, 12))
              for r in (0, 1)]
    for paths, rank in zip(monday, (0, 1)):  # Monday's run is there, every rank's shard in it
        open(os.path.join(paths.main, f"rank-{rank:05d}.alog"), "wb").close()
    tuesday = rank_run_paths(tmp_path, template, "/c/step_1", "standard", "sweep", 0, now=datetime(2025, 1, 14, 0, 1))
    assert tuesday.main.endswith("2025-01-14/probe_sweep_step_1") and tuesday.main != monday[0].main
