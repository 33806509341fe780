"""The workloads, what a probe logs per checkpoint, at three scales, and the loop that drives a peer through one.

1. events   records of 10 fields (step, checkpoint name, 8 floats), as ``core_results`` rows
2. tokens   a debug token stream: one row per sequence, int64 ids, float32 log-probs and entropies
3. tensors  float32 snapshots
4. demo     the toy entropy probe (``asynclog.probe.toyprobe``) through DetailedLogger at debug level, and without

Between batches of calls the probe "computes": ``time.sleep`` stands for GPU work, which leaves the CPU to
whoever wants it (the same pause for every peer, never counted as caller time). It is where an
asynchronous logger catches up; a synchronous one gains nothing from it.

Every call is timed from outside the adapter with ``perf_counter_ns``; the data for a call is made before
its timer starts.
"""

from __future__ import annotations

import math
import random
import time
from array import array
from dataclasses import dataclass, field

__all__ = ["Workload", "WORKLOADS", "SCALES", "TENSOR_SIZES", "prepare", "drive", "event_fields", "token_row",
           "snapshots"]

SCALES = ("tiny", "short", "full")
VOCAB = 50257
ROW_TOKENS = 150
# The size sweep of ``benchmarks/bench_core.py`` (run.tensor against a copy); the workload uses 512 KiB and 16 MiB.
TENSOR_SIZES = (1 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20)
_CHECKPOINTS = [f"ckpt_{i:04d}" for i in range(8)]


@dataclass(frozen=True)
class Workload:
    """One workload: its size at each scale and the probe's pause between batches of calls."""

    key: str
    sizes: dict[str, dict] = field(default_factory=dict)

    def params(self, scale: str) -> dict:
        return self.sizes[scale]

    def title(self, scale: str) -> str:
        p = self.params(scale)
        if self.key == "events":
            return (f"events: {p['count']:,} records of 10 fields; "
                    f"probe pauses {p['pause_s'] * 1e3:g} ms every {p['every']} records")
        if self.key == "tokens":
            return (f"tokens: {p['sequences']:,} sequences x {p['length']} tokens (int64 ids, float32 "
                    f"log-probs, entropies); probe pauses {p['pause_s'] * 1e3:g} ms every {p['every']} sequences")
        if self.key == "tensors":
            return (f"tensors: {p['count']} float32 tensors of {_mib(p['nbytes'])}; "
                    f"probe pauses {p['pause_s'] * 1e3:g} ms after each")
        return (f"demo: the toy entropy probe (asynclog.probe.toyprobe, size {p['size']}) over {p['checkpoints']} "
                f"checkpoints, DetailedLogger at debug level vs no logger")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB" if n >= 1 << 20 else f"{n / 1024:g} KiB"


WORKLOADS = {
    "events": Workload("events", {
        "tiny": {"count": 400, "every": 100, "pause_s": 0.001},
        "short": {"count": 5_000, "every": 100, "pause_s": 0.001},
        "full": {"count": 100_000, "every": 100, "pause_s": 0.001},
    }),
    "tokens": Workload("tokens", {
        "tiny": {"sequences": 40, "length": ROW_TOKENS, "every": 16, "pause_s": 0.005},
        "short": {"sequences": 256, "length": ROW_TOKENS, "every": 64, "pause_s": 0.02},
        "full": {"sequences": 2048, "length": ROW_TOKENS, "every": 64, "pause_s": 0.02},
    }),
    "tensors": Workload("tensors", {
        "tiny": {"count": 3, "nbytes": 64 << 10, "pause_s": 0.005},
        "short": {"count": 4, "nbytes": 512 << 10, "pause_s": 0.01},
        "full": {"count": 32, "nbytes": 16 << 20, "pause_s": 0.1},
    }),
    "demo": Workload("demo", {
        "tiny": {"size": "tiny", "checkpoints": 1},
        "short": {"size": "tiny", "checkpoints": 2},
        "full": {"size": "small", "checkpoints": 3},
    }),
}


# --- driving one adapter (runs inside the peer's own subprocess) ---------------------------------------------
def prepare(workload: str, params: dict) -> dict:
    """What the workload holds before it starts (latency slots, the tensors), made before the RSS baseline."""
    calls = params.get("count") or params.get("sequences")
    state = {"lat": array("q", bytes(8 * calls))}
    if workload in ("tokens", "tensors"):
        import torch  # noqa: F401 - imported here so its memory is in the baseline, not the growth
    if workload == "tensors":
        # Eight distinct tensors used in turn: a repeat is 8 tensors back, beyond any compressor's window.
        state["tensors"] = snapshots(params["nbytes"], min(calls, 8))
    return state


def snapshots(nbytes: int, count: int) -> list:
    """``count`` distinct float32 tensors of ``nbytes`` each, seeded: the tensors every peer is given."""
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randn(nbytes // 4, generator=g) for _ in range(count)]


def event_fields(i: int, count: int, rng: random.Random) -> dict:
    """Record ``i`` of ``count``: the 10 fields of a ``core_results`` row (step, checkpoint name, 8 floats)."""
    decay = math.exp(-i / count)
    return {"step": i, "checkpoint": _CHECKPOINTS[i * len(_CHECKPOINTS) // count],
            "loss": 2.0 * decay + 0.05 * rng.random(), "entropy_mean": 3.0 * decay + rng.random(),
            "entropy_std": 0.5 + 0.1 * rng.random(), "kl": 0.01 * rng.random(),
            "reward": 1.0 - decay + 0.1 * rng.random(), "grad_norm": rng.lognormvariate(0, 0.5),
            "lr": 3e-4 * decay, "tokens_per_s": 12000.0 + 1000.0 * rng.random()}


def token_row(g, length: int = ROW_TOKENS) -> tuple:
    """One sequence of the token stream from generator ``g``: int64 ids, float32 log-probs and entropies."""
    import torch

    tokens = torch.randint(0, VOCAB, (length,), generator=g)
    logprobs = torch.empty(length).exponential_(generator=g).neg_()
    entropies = torch.rand(length, generator=g).mul_(math.log(VOCAB))
    return tokens, logprobs, entropies


def drive(adapter, workload: str, params: dict, state: dict) -> array:
    """Run ``workload`` through an opened ``adapter``; return each call's latency in ns."""
    return _DRIVERS[workload](adapter, params, state)


def _events(adapter, p: dict, state: dict) -> array:
    count, every, pause = p["count"], p["every"], p["pause_s"]
    rng = random.Random(0)
    lat = state["lat"]
    clock = time.perf_counter_ns
    for i in range(count):
        fields = event_fields(i, count, rng)
        t0 = clock()
        adapter.event("core_results", fields)
        lat[i] = clock() - t0
        if (i + 1) % every == 0:
            time.sleep(pause)
    return lat


def _tokens(adapter, p: dict, state: dict) -> array:
    import torch

    sequences, length, every, pause = p["sequences"], p["length"], p["every"], p["pause_s"]
    g = torch.Generator().manual_seed(0)
    lat = state["lat"]
    clock = time.perf_counter_ns
    for i in range(sequences):
        tokens, logprobs, entropies = token_row(g, length)
        t0 = clock()
        adapter.row(i, tokens, logprobs, entropies)
        lat[i] = clock() - t0
        if (i + 1) % every == 0:
            time.sleep(pause)
    return lat


def _tensors(adapter, p: dict, state: dict) -> array:
    count, pause = p["count"], p["pause_s"]
    bases, lat = state["tensors"], state["lat"]
    clock = time.perf_counter_ns
    for i in range(count):
        tensor = bases[i % len(bases)]
        t0 = clock()
        adapter.tensor("activations", tensor)
        lat[i] = clock() - t0
        time.sleep(pause)
    return lat


_DRIVERS = {"events": _events, "tokens": _tokens, "tensors": _tensors}
