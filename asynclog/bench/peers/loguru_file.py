"""(e) loguru: ``logger.add(path, serialize=True, enqueue=True)``; fields as keyword arguments (its ``extra``).

With ``enqueue=True`` loguru formats and serializes the record in the caller, then a thread writes it.
Tensors go as ``tolist()`` lists (tolist JSON); so do the token rows.
"""

from __future__ import annotations

import os

from asynclog.bench.peers._base import Adapter


class Loguru(Adapter):
    name = "loguru"
    requires = ("loguru",)
    how = {"events": "native (serialize=True)", "tokens": "tolist JSON", "tensors": "tolist JSON"}

    def open(self, directory: str, workload: str) -> None:
        from loguru import logger

        self.logger = logger
        logger.remove()  # the default stderr sink is not part of the comparison
        self.sink = logger.add(os.path.join(directory, "log.jsonl"), serialize=True, enqueue=True, level="DEBUG")

    def event(self, name: str, fields: dict) -> None:
        self.logger.info(name, **fields)

    def row(self, sequence_id: int, tokens, logprobs, entropies) -> None:
        self.logger.debug("tokens", sequence_id=sequence_id, tokens=tokens.tolist(), logprobs=logprobs.tolist(),
                          entropies=entropies.tolist())

    def tensor(self, name: str, tensor) -> None:
        self.logger.debug("tensor", tensor=name, shape=list(tensor.shape), values=tensor.tolist())

    def close(self) -> None:
        self.logger.complete()
        self.logger.remove(self.sink)
