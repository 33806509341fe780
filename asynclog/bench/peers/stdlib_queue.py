"""(b) stdlib ``logging``: QueueHandler in the caller, QueueListener writing JSON lines to a FileHandler.

The caller's cost is ``QueueHandler.prepare`` (format and copy the record) and a queue put; ``json.dumps``
runs on the listener's thread. Tensors, which logging cannot carry as such, go the way a user would send
them: ``tolist()`` in the caller, JSON on the listener.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import queue

from asynclog.bench.peers._base import Adapter


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": record.created, "level": record.levelname, "name": record.getMessage(),
                           "data": record.data})


class StdlibQueue(Adapter):
    name = "stdlib QueueHandler"
    how = {"events": "native (json lines)", "tokens": "tolist JSON", "tensors": "tolist JSON"}

    def open(self, directory: str, workload: str) -> None:
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.file_handler = logging.FileHandler(os.path.join(directory, "log.jsonl"), encoding="utf-8")
        self.file_handler.setFormatter(_JsonLines())
        self.listener = logging.handlers.QueueListener(self.queue, self.file_handler)
        self.listener.start()
        self.handler = logging.handlers.QueueHandler(self.queue)
        self.logger = logging.getLogger("asynclog.bench.stdlib")
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False
        self.logger.addHandler(self.handler)

    def event(self, name: str, fields: dict) -> None:
        self.logger.info(name, extra={"data": fields})

    def row(self, sequence_id: int, tokens, logprobs, entropies) -> None:
        self.logger.debug("tokens", extra={"data": {"sequence_id": sequence_id, "tokens": tokens.tolist(),
                                                    "logprobs": logprobs.tolist(),
                                                    "entropies": entropies.tolist()}})

    def tensor(self, name: str, tensor) -> None:
        self.logger.debug("tensor", extra={"data": {"name": name, "shape": list(tensor.shape),
                                                    "values": tensor.tolist()}})

    def close(self) -> None:
        self.listener.stop()  # drains the queue, then joins the listener thread
        self.logger.removeHandler(self.handler)
        self.file_handler.close()
