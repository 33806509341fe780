"""(d) Weights & Biases in offline mode: ``wandb.init(mode="offline", dir=...)``, ``run.log``, ``run.finish``.

Events: ``run.log(fields)``. Tokens: a ``wandb.Table`` with one row per sequence (lists from ``tolist()``),
logged once at the end, which is how wandb keeps per-example data. Tensors: ``wandb.Histogram`` (lossy,
64 bins), what wandb offers for a tensor. wandb runs a service process beside the probe.
"""

from __future__ import annotations

import os

from asynclog.bench.peers._base import Adapter


class WandbOffline(Adapter):
    name = "wandb offline"
    requires = ("wandb",)
    how = {"events": "run.log", "tokens": "wandb.Table of tolist rows", "tensors": "wandb.Histogram (lossy)"}

    def open(self, directory: str, workload: str) -> None:
        # Keep wandb's caches and settings out of the user's home; only ``directory`` is counted as output.
        scratch = directory + ".wandb-home"
        os.makedirs(scratch, exist_ok=True)
        for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
            os.environ[var] = scratch
        os.environ["WANDB_MODE"] = "offline"
        os.environ["WANDB_SILENT"] = "true"
        import wandb

        self.wandb = wandb
        self.run = wandb.init(mode="offline", dir=directory, project="asynclog-bench", name=workload)
        self.table = None

    def event(self, name: str, fields: dict) -> None:
        self.run.log(fields)

    def row(self, sequence_id: int, tokens, logprobs, entropies) -> None:
        if self.table is None:
            self.table = self.wandb.Table(columns=["sequence_id", "tokens", "logprobs", "entropies"])
        self.table.add_data(sequence_id, tokens.tolist(), logprobs.tolist(), entropies.tolist())

    def tensor(self, name: str, tensor) -> None:
        self.run.log({name: self.wandb.Histogram(tensor.numpy())})

    def close(self) -> None:
        if self.table is not None:
            self.run.log({"tokens": self.table})
            self.table = None
        self.run.finish()
