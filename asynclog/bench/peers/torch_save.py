"""(f) ``torch.save`` per tensor: one ``.pt`` file per snapshot, one per sequence for the token stream.

Records are not tensors; a user keeping them with torch.save would hold them in a list and save once,
which is the naive logger: n/a here.
"""

from __future__ import annotations

import os

from asynclog.bench.peers._base import Adapter


class TorchSave(Adapter):
    name = "torch.save"
    requires = ("torch",)
    how = {"tokens": "one .pt per sequence", "tensors": "one .pt per tensor"}
    not_applicable = {"events": "not an event logger (see naive)"}

    def open(self, directory: str, workload: str) -> None:
        import torch

        self.save = torch.save
        self.directory = directory
        self.count = 0

    def row(self, sequence_id: int, tokens, logprobs, entropies) -> None:
        self.save({"sequence_id": sequence_id, "tokens": tokens, "logprobs": logprobs, "entropies": entropies},
                  os.path.join(self.directory, f"tokens_{sequence_id:06d}.pt"))

    def tensor(self, name: str, tensor) -> None:
        self.save(tensor, os.path.join(self.directory, f"{name}_{self.count:05d}.pt"))
        self.count += 1
