"""(a) The naive synchronous logger: keep everything in a dict, ``json.dump`` it through gzip at the end.

Tensors become lists with ``tolist()`` because that is what makes them JSON. Every workload runs.
"""

from __future__ import annotations

import gzip
import json
import os
import time

from asynclog.bench.peers._base import Adapter


class Naive(Adapter):
    name = "naive dict+json.gz"
    how = {"events": "dict, json.dump at end", "tokens": "tolist, json.dump at end",
           "tensors": "tolist, json.dump at end"}

    def open(self, directory: str, workload: str) -> None:
        self.path = os.path.join(directory, "log.json.gz")
        self.data: dict[str, list] = {"events": [], "tokens": [], "tensors": []}

    def event(self, name: str, fields: dict) -> None:
        self.data["events"].append({"name": name, "time": time.time(), **fields})

    def row(self, sequence_id: int, tokens, logprobs, entropies) -> None:
        self.data["tokens"].append({"sequence_id": sequence_id, "tokens": tokens.tolist(),
                                    "logprobs": logprobs.tolist(), "entropies": entropies.tolist()})

    def tensor(self, name: str, tensor) -> None:
        self.data["tensors"].append({"name": name, "shape": list(tensor.shape), "values": tensor.tolist()})

    def close(self) -> None:
        with gzip.open(self.path, "wt", encoding="utf-8") as f:
            json.dump(self.data, f)
        self.data = {}
