"""Shared fixtures: a log directory, a subprocess runner, and the --full switch for long suites."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=25, deadline=None)
settings.register_profile("full", max_examples=400, deadline=None)


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", help="run the long property and fault suites in full")


def pytest_configure(config):
    settings.load_profile("full" if config.getoption("--full") else "ci")


@pytest.fixture
def full(request) -> bool:
    return request.config.getoption("--full")


@pytest.fixture
def logdir(tmp_path):
    path = tmp_path / "logs"
    path.mkdir()
    return path


def spawn_script(code: str, *args: str, **popen_kwargs) -> subprocess.Popen:
    """Start ``code`` in a fresh interpreter (a real probe process), stdout piped, text mode."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            **popen_kwargs)


def wait_gone(pid: int, timeout: float = 20.0) -> None:
    """Wait until a process (not our child) has exited."""
    import psutil

    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        pass


# A config whose queue and pool fill after a few records: for policies and waits.
SMALL = {"queue_batches": 2, "batch_records": 1, "staging_bytes": 1 << 20, "flush_interval_s": 0.05}


class Stopped:
    """The run's writer process stopped (SIGSTOP) for the duration of the block."""

    def __init__(self, run):
        self.pid = run._channel.process.pid

    def __enter__(self):
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc):
        os.kill(self.pid, signal.SIGCONT)


# --- the user's checkpoint layout: a LoRA adapter in <checkpoints>/step_N/model --------------------------------
def adapter_sweep(out, checkpoints, steps=(60, 120, 180)) -> list[str]:
    """A DetailedLogger's runs over ``<checkpoints>/step_<N>/model``, with core results and ground truth."""
    from asynclog import DetailedLogger

    config = {"detailed_logging": {"enabled": True, "level": "standard", "output_directory": str(out),
                                   "max_files": 0}}
    logger, paths = DetailedLogger(config), []
    for i, step in enumerate(steps, 1):
        logger.log_run_start(os.path.join(checkpoints, f"step_{step}", "model"), config)
        logger.log_phase_start("phase1_sum_X")
        logger.log_phase_end("phase1_sum_X")
        logger.log_ground_truth_results({"deltaH_true": 1e-4 * i, "diagnostics": {"ESS": 10.0 + i, "w_max": 2.0}})
        logger.log_core_results({"deltaH1": 1.1e-4 * i, "bars_dot": 0.5})
        paths.append(logger.finalize_log({}))
    return paths


def old_adapter_run(out, checkpoint: str) -> str:
    """A run as DetailedLogger wrote it before checkpoint names skipped ``model``: ``..._model.alog``, settings
    in its header without ``checkpoint_name``, and its summary."""
    import json

    import asynclog

    day = os.path.join(out, "2025-01-14")
    os.makedirs(day, exist_ok=True)
    path = os.path.join(day, "entropy_probe_09-00-00_model.alog")
    metadata = {"checkpoint_path": checkpoint, "local_time": "2025-01-14T09:00:00"}
    settings = {"enabled": True, "level": "standard", "filename_template": "entropy_probe_{timestamp}_{checkpoint_name}.json"}
    asynclog.start(path=path, metadata={"run_metadata": metadata, "detailed_logging": settings}).close()
    summary = {"level": "standard", "run_metadata": metadata, "complete": True, "timing": {"phase1_sum_X": 0.1},
               "core_results": {"deltaH1": 9e-4, "bars_dot": 0.5},
               "ground_truth": {"deltaH_true": 8e-4, "diagnostics": {"ESS": 9.0, "w_max": 3.0}}}
    with open(path.removesuffix(".alog") + "_summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f)
    return path


class WordTokenizer:
    """A tokenizer in miniature: id i is the word "w<i>"."""

    def decode(self, ids) -> str:
        return " ".join(f"w{int(i)}" for i in ids)


@pytest.fixture
def texts_log(tmp_path) -> str:
    """A debug run of ``DetailedLogger`` with a tokenizer: ``tokens/U_batch`` in two chunks (40 prompts x 2
    responses, prompts left-padded), the texts of its ids in the run's ``vocab`` table."""
    import torch

    from asynclog import DetailedLogger

    g = torch.Generator().manual_seed(4)
    prompt_lens = torch.randint(1, 5, (40,), generator=g)
    mask = (torch.arange(12) >= 4 - prompt_lens[:, None, None]).expand(40, 2, 12).long()
    batch = {"sequences": torch.randint(3, 500, (40, 2, 12), generator=g) * mask, "attention_masks": mask,
             "prompt_lens": prompt_lens.tolist()}
    config = {"detailed_logging": {"enabled": True, "level": "debug", "output_directory": str(tmp_path),
                                   "log_tokens": True}}
    logger = DetailedLogger(config, tokenizer=WordTokenizer())
    logger.log_run_start("step_1")
    logger.log_batch_data("U_batch", batch)
    return logger.finalize_log({})


@pytest.fixture(scope="session")
def debug_sweep(tmp_path_factory):
    """A real demo sweep (``asynclog demo``, size tiny) of two checkpoints at level debug: sequences, tokens and
    importance streams, summaries beside the logs. Shared by the tests of a session: read it, never change it."""
    out = tmp_path_factory.mktemp("sweep") / "logs"
    done = subprocess.run([sys.executable, "-m", "asynclog", "demo", "--size", "tiny", "--level", "debug",
                           "--checkpoints", "2", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out
