"""DetailedLogger under a real ``torchrun`` launch that names no run (no ``--rdzv-id``, no ``--standalone``:
``TORCHELASTIC_RUN_ID`` is ``none``), as a probe's two-GPU job is launched: every rank finds one run folder,
each launch its own, and the log says how the name was found.

Each launch runs ``python -m torch.distributed.run`` (the venv's torchrun) with a gloo process group on the
CPU; ``TMPDIR`` points into the test's folder, so torchrun's own launch folders land there, not in /tmp.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

import asynclog

PROBE = """
import json, sys, torch, torch.distributed as dist
from asynclog import DetailedLogger

out, level = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()
config = {"detailed_logging": {"enabled": True, "level": level, "output_directory": out, "max_files": 0},
          "asynclog": {"staging_bytes": 4 << 20}}
logger = DetailedLogger(config)
B, G, P, T = 3, 2, 5, 12
g = torch.Generator().manual_seed(rank)
mask = torch.arange(T) < P + torch.randint(1, T - P + 1, (B, G, 1), generator=g)  # the prompt, then its answer
batch = {"sequences": torch.randint(3, 1000, (B, G, T), generator=g) * mask, "attention_masks": mask,
         "prompt_lens": [P] * B, "advantages": torch.randn(B, G, generator=g)}
folder = logger.log_run_start("/ckpt/step_60", config)
logger.log_phase_start("phase0_sampling")
logger.log_batch_data("E_batch", batch)
logger.log_phase_end("phase0_sampling")
logger.finalize_log({"deltaH1": 0.5})
print(json.dumps({"rank": rank, "folder": folder}), flush=True)
dist.destroy_process_group()
"""

_LAUNCHER_VARS = ("ASYNCLOG_RUN_NAME", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_ERROR_FILE",
                  "SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                  "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_command(tmp_path, port: int, *options: str, level: str = "standard") -> list:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    return [sys.executable, "-m", "torch.distributed.run", f"--master_port={port}", *options, str(script),
            str(tmp_path / "logs"), level]


def _environment(tmp_path) -> dict:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    clean = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    return {**clean, "TMPDIR": str(tmp_path / "tmp"), "OMP_NUM_THREADS": "1"}


def _folders(*launches) -> list[str]:
    """Each rank's run folder, in the order the ranks printed them."""
    folders = []
    for proc in launches:
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        # The ranks share torchrun's stdout and print at the same moment: two lines can come out run together.
        decoder, text, at = json.JSONDecoder(), proc.stdout, proc.stdout.find("{\"rank\"")
        while at != -1:
            printed, end = decoder.raw_decode(text, at)
            folders.append(printed["folder"])
            at = text.find("{\"rank\"", end)
    return folders


def _launch(tmp_path, *options: str, **kwargs) -> subprocess.CompletedProcess:
    command = _torchrun_command(tmp_path, _free_port(), "--nproc_per_node=2", *options, **kwargs)
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=_environment(tmp_path))


def _name_sources(folder: str) -> list[str]:
    """How each rank's shard says the run was named: its header's, then its summary's."""
    sources = []
    with asynclog.open(folder) as log:
        assert log.complete and log.ranks == [0, 1], log.problems
        for rank in log.ranks:
            sources.append(log.shard(rank).header["metadata"]["run_metadata"]["name_source"])
            with open(os.path.join(folder, f"rank-{rank:05d}_summary.json")) as f:
                sources.append(json.load(f)["run_metadata"]["name_source"])
        assert set(log.batch_statistics()) == {"E_batch"}
    return sources


@pytest.mark.parametrize("level", ["standard", "detailed"])
def test_a_launch_without_a_run_id_logs_one_run_folder_named_after_torchruns_launch_folder(tmp_path, level):
    folders = _folders(_launch(tmp_path, level=level))
    assert len(folders) == 2 and folders[0] == folders[1]
    [launch] = os.listdir(tmp_path / "tmp")  # torchelastic_<random>: torchrun's folder for this launch
    [run] = os.listdir(tmp_path / "tmp" / launch)  # none_<random>: "none", the run id, then mkdtemp's letters
    assert os.path.basename(folders[0]) == f"entropy_probe_torchrun-{run.removeprefix('none_')}_step_60"
    assert sorted(os.listdir(folders[0])) == ["config.yaml", "manifest.json", "rank-00000.alog",
                                              "rank-00000_summary.json", "rank-00001.alog", "rank-00001_summary.json"]
    assert _name_sources(folders[0]) == ["TORCHELASTIC_ERROR_FILE"] * 4


def test_two_launches_in_a_row_log_two_run_folders(tmp_path):
    first, second = _folders(_launch(tmp_path)), _folders(_launch(tmp_path))
    assert first[0] == first[1] and second[0] == second[1] and first[0] != second[0]
    for folder in (first[0], second[0]):
        assert _name_sources(folder) == ["TORCHELASTIC_ERROR_FILE"] * 4


def test_a_launch_over_two_nodes_agrees_on_a_name_through_the_process_groups_store(tmp_path):
    port = _free_port()
    nodes = [subprocess.Popen(_torchrun_command(tmp_path, port, "--nnodes=2", f"--node_rank={node}",
                                                "--nproc_per_node=1", "--master_addr=127.0.0.1"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_environment(tmp_path))
             for node in (0, 1)]
    try:
        launches = [subprocess.CompletedProcess(node.args, 0, *node.communicate(timeout=120)) for node in nodes]
        for launch, node in zip(launches, nodes):
            launch.returncode = node.returncode
    finally:
        for node in nodes:
            node.kill()
    assert len(os.listdir(tmp_path / "tmp")) == 2  # each node's agent made a launch folder of its own
    folders = _folders(*launches)
    assert len(folders) == 2 and folders[0] == folders[1]
    assert _name_sources(folders[0]) == ["process_group_store"] * 4
