"""The CUDA snapshot path on a real GPU: bit-exact copies, the source free to change or go as soon as
``run.tensor`` returns, non-default streams, another device, and a sticky CUDA error that must not hang.

Skipped without CUDA (this project's CI has no GPU); ``scripts/gpu-check.sh`` runs it where one is lent.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

import asynclog

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64, torch.complex128,
          torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
          getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None)]
SMALL_POOL = {"staging_bytes": 4 << 20}  # a piece is at most 1 MiB: larger tensors go through in pieces


def _random_bits(n_bytes: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Every bit pattern possible (NaNs, infinities, subnormals), made on the CPU, viewed as ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (n_bytes,), generator=g, dtype=torch.uint8)
    if dtype is torch.bool:
        return (raw & 1).bool()
    return raw.view(dtype)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d is not None], ids=str)
@pytest.mark.parametrize("n_bytes", [1 << 10, (3 << 20) + 16], ids=["1KiB", "3MiB-in-pieces"])
def test_every_dtype_round_trips_bit_exact_from_the_gpu(logdir, dtype, n_bytes):
    expected = _random_bits(n_bytes, dtype, seed=n_bytes)
    with asynclog.start(logdir, name="dtypes", config=SMALL_POOL) as run:
        run.tensor("t", expected.cuda())
    with asynclog.open(run.path) as log:
        assert _same_bits(log.tensor("t"), expected)


def test_the_source_may_be_overwritten_right_after_the_call(logdir):
    with asynclog.start(logdir, name="overwrite", config=SMALL_POOL) as run:
        # Whole numbers, so that adding 1.0 eight times is exact and equals adding i at once.
        source = torch.randint(-1000, 1000, (1 << 20,), device="cuda").float()
        expected = source.cpu()
        for i in range(8):
            run.tensor("t", source)
            source.add_(1.0)  # a kernel on the same stream, queued right after the copy
        final = source.cpu()
    with asynclog.open(run.path) as log:
        for i in range(8):
            assert torch.equal(log.tensor("t", i), expected + i)
    assert torch.equal(final, expected + 8)


def test_the_source_may_be_freed_right_after_the_call(logdir):
    n = 1 << 20
    with asynclog.start(logdir, name="freed", config=SMALL_POOL) as run:
        for i in range(8):
            run.tensor("t", torch.full((n,), float(i), device="cuda") * 2)  # a temporary, freed at once
            torch.full((n,), -1.0, device="cuda")  # reuses the freed block if the copy did not keep it
    with asynclog.open(run.path) as log:
        for i in range(8):
            assert torch.equal(log.tensor("t", i), torch.full((n,), 2.0 * i))


def test_a_copy_on_a_non_default_stream_is_ordered_on_that_stream(logdir):
    side = torch.cuda.Stream()
    with asynclog.start(logdir, name="side_stream", config=SMALL_POOL) as run:
        with torch.cuda.stream(side):
            source = torch.randn(1 << 20, device="cuda")
            expected = source.cpu()
            run.tensor("t", source)
            source.mul_(0)  # on the side stream, after the copy
        side.synchronize()
    with asynclog.open(run.path) as log:
        assert torch.equal(log.tensor("t"), expected)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_tensor_on_another_gpu_than_the_current_one(logdir):
    with asynclog.start(logdir, name="other_gpu", config=SMALL_POOL) as run:
        torch.cuda.set_device(0)
        source = torch.randn(1 << 20, device="cuda:1")
        expected = source.cpu()
        run.tensor("t", source)
        source.zero_()
    with asynclog.open(run.path) as log:
        assert torch.equal(log.tensor("t"), expected)


def test_a_copy_reaches_the_writer_though_the_probe_makes_no_other_call(logdir):
    """No thread waits on the copy: the sender's poll hands it over while the probe only computes."""
    source = torch.randn(1 << 18, device="cuda")
    expected = source.cpu()
    run = asynclog.start(logdir, name="idle", config={**SMALL_POOL, "flush_interval_s": 60})
    try:
        run.tensor("t", source)
        deadline = time.monotonic() + 10
        while run._stager._pending and time.monotonic() < deadline:
            torch.cuda._sleep(1_000_000)  # the probe's own GPU work; no logging call
            time.sleep(0.01)
        assert not run._stager._pending
    finally:
        run.close()
    with asynclog.open(run.path) as log:
        assert torch.equal(log.tensor("t"), expected)


def test_no_thread_is_started_for_cuda_copies(logdir):
    with asynclog.start(logdir, name="threads", config=SMALL_POOL) as run:
        run.tensor("warm", torch.ones(16, device="cuda"))
        before = {t.ident for t in threading.enumerate()}
        for i in range(20):
            run.tensor("t", torch.full((1 << 16,), float(i), device="cuda"))
        run.flush()
        assert {t.ident for t in threading.enumerate()} <= before
    with asynclog.open(run.path) as log:
        assert [float(log.tensor("t", i)[0]) for i in range(20)] == [float(i) for i in range(20)]


def test_a_sticky_cuda_error_reaches_the_caller_instead_of_hanging(logdir):
    # A device-side assert poisons the CUDA context for good, so it runs in a process of its own.
    code = textwrap.dedent("""
        import sys, torch, asynclog
        run = asynclog.start(sys.argv[1], name="sticky", config={"staging_bytes": 4 << 20, "timeout_s": 20})
        run.tensor("before", torch.ones(1 << 18, device="cuda"))
        run.flush()
        run.tensor("t", torch.ones(1 << 18, device="cuda"))
        torch.zeros(1, device="cuda")[torch.tensor([10], device="cuda")]  # out of bounds: device-side assert
        try:
            for _ in range(100):
                run.tensor("after", torch.ones(1 << 18, device="cuda"))
            run.flush()
            print("no error", flush=True)
        except (asynclog.WriterError, RuntimeError) as exc:
            print("raised", type(exc).__name__, flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", code, str(logdir)], capture_output=True, text=True, timeout=120)
    assert "raised" in done.stdout, (done.stdout, done.stderr[-2000:])
    with asynclog.open(logdir / "sticky.alog") as log:
        assert torch.equal(log.tensor("before"), torch.ones(1 << 18))


def test_the_demo_probe_on_the_gpu_logs_what_it_logs_on_the_cpu(tmp_path):
    """The whole probe on CUDA tensors at debug level: the same streams and tensors as on the CPU, read back."""
    logs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        done = subprocess.run([sys.executable, "-m", "asynclog", "demo", "--size", "tiny", "--device", device,
                               "--out", str(out)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        [logs[device]] = out.glob("*/*.alog")
    with asynclog.open(logs["cpu"]) as cpu, asynclog.open(logs["cuda"]) as gpu:
        assert gpu.complete
        assert gpu.stream_names() == cpu.stream_names() and gpu.tensor_names() == cpu.tensor_names()
        rows = list(gpu.rows("sequences/E_batch"))
        assert len(rows) == len(list(cpu.rows("sequences/E_batch")))
        token_rows = list(gpu.rows("tokens/E_batch"))
        assert all(len(r["tokens"]) == len(r["token_logprobs"]) == len(r["token_texts"]) for r in token_rows)
        for name in gpu.tensor_names():
            assert gpu.tensor(name).device.type == "cpu" and gpu.tensor(name).shape == cpu.tensor(name).shape
