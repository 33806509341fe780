"""The demo probe: ``asynclog demo`` writes readable logs, and the toy probe's math holds together."""

from __future__ import annotations

import glob
import math
import os
import subprocess
import sys

import torch

import asynclog
from asynclog import cli
from asynclog.probe import toyprobe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asynclog", "demo", "--size", "tiny", "--out", str(tmp_path / "logs"),
                           *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_demo_sweep_writes_one_readable_log_per_checkpoint(tmp_path):
    done = demo(tmp_path, "--level", "debug", "--checkpoints", "2")
    assert done.returncode == 0, done.stderr
    logs = sorted(glob.glob(str(tmp_path / "logs" / "*" / "*.alog")))
    assert len(logs) == 2
    for path in logs:
        assert path in done.stdout  # it says where each log is
        with asynclog.open(path) as log:
            assert log.complete and log.header["level"] == "debug"
            core = next(log.events(name="core_results"))["data"]
            assert math.isfinite(core["deltaH1"]) and math.isfinite(core["deltaH_true"])
            ess = next(log.events(name="ground_truth"))["data"]["diagnostics"]["ESS"]
            assert 0 < ess <= toyprobe.SIZES["tiny"].B_E
            assert {"sequences/E_batch", "tokens/U_batch", "importance/E_batch"} <= set(log.stream_names())
            row = next(log.rows("tokens/E_batch"))
            assert len(row["token_texts"]) == len(row["tokens"]) == len(row["token_logprobs"])
        assert os.path.exists(path.removesuffix(".alog") + "_summary.json")
    assert os.path.exists(tmp_path / "logs" / "README.md")


def demo_here(tmp_path, capsys, *args: str) -> str:
    """The same command in this process (the subprocess test above covers the console script)."""
    assert cli.main(["demo", "--size", "tiny", "--out", str(tmp_path / "logs"), *args]) == 0
    return capsys.readouterr().out


def test_demo_with_a_level_config_logs_at_that_level(tmp_path, capsys):
    out = demo_here(tmp_path, capsys, "--config", os.path.join(ROOT, "configs", "minimal.yaml"))
    [path] = glob.glob(str(tmp_path / "logs" / "*" / "*.alog"))
    assert path in out
    with asynclog.open(path) as log:
        assert log.header["level"] == "minimal" and log.stream_names() == [] and log.tensor_names() == []


def test_demo_without_logging_writes_nothing(tmp_path, capsys):
    out = demo_here(tmp_path, capsys, "--no-logging")
    assert "logging disabled" in out and "deltaH1=" in out
    assert not (tmp_path / "logs").exists()


# --- the toy probe itself ----------------------------------------------------------------------------------
def test_probe_restores_the_models_weights():
    size = toyprobe.SIZES["tiny"]
    model, tokenizer, prompts = toyprobe.build(size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    toyprobe.run_probe(model, tokenizer, prompts, size)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_teacher_forcing_reproduces_the_sampled_log_probs():
    size = toyprobe.SIZES["tiny"]
    model, tokenizer, prompts = toyprobe.build(size)
    g = torch.Generator().manual_seed(0)
    sampled = toyprobe.sample(model, prompts[:6], 3, size, g)
    batch, sequences = toyprobe.pack_batch(sampled, 6, 3, tokenizer, list(range(6)),
                                       toyprobe.toy_reward(sampled["ids"], sampled["mask"], sampled["width"]))
    with torch.no_grad():
        S, RB = toyprobe.teacher_force(model, batch)
    assert torch.allclose(S, sequences["sequence_logprob"].reshape(-1), atol=1e-4)
    assert torch.allclose(RB, sequences["rb_entropy"].reshape(-1), atol=1e-4)
    assert torch.allclose(batch["advantages"].sum(1), torch.zeros(6), atol=1e-6)  # centred per prompt


def test_first_order_prediction_tracks_the_importance_sampled_change():
    """deltaH1 = lr * <grad H, update> is a first-order estimate of deltaH_true: close at a small step."""
    size = toyprobe.SIZES["tiny"]
    model, tokenizer, prompts = toyprobe.build(size)
    results = toyprobe.run_probe(model, tokenizer, prompts, size)
    assert results["deltaH1"] != 0
    assert abs(results["deltaH_true"] - results["deltaH1"]) < 0.25 * abs(results["deltaH1"])
    assert 0 < results["diagnostics"]["ESS"] <= size.B_E
    assert results["diagnostics"]["w_min"] <= 1 <= results["diagnostics"]["w_max"]


def test_demo_refuses_a_device_it_cannot_use_before_running_anything(tmp_path):
    missing = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    for device, says in ((missing, "CUDA device"), ("abacus", "not a device torch knows")):
        done = demo(tmp_path, "--device", device)
        assert done.returncode == cli.USAGE, (device, done.stderr)
        assert says in done.stderr
    assert not (tmp_path / "logs").exists()
