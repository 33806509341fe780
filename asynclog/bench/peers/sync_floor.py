"""(g) The synchronous floor: the same work asynclog's writer does, done in the caller's thread.

msgspec.msgpack encodes each record, row or tensor and a zstandard stream writer (asynclog's default level)
compresses it into one file; close ends the frame and fsyncs, as asynclog's close does. What this costs the
caller is what asynclog moves off the caller's thread.
"""

from __future__ import annotations

import os
import time

import msgspec
import zstandard

from asynclog.bench.peers._base import Adapter
from asynclog.config import Config

ZSTD_LEVEL = Config().zstd_level


def _raw(tensor) -> memoryview:
    return memoryview(tensor.numpy()).cast("B")


class SyncFloor(Adapter):
    name = "sync msgspec+zstd"
    how = {"events": "native", "tokens": "native", "tensors": "native"}

    def open(self, directory: str, workload: str) -> None:
        self.file = open(os.path.join(directory, "log.msgpack.zst"), "wb")
        self.writer = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(self.file)
        self.encode = msgspec.msgpack.Encoder().encode

    def event(self, name: str, fields: dict) -> None:
        self.writer.write(self.encode({"type": "event", "name": name, "time": time.time(), "data": fields}))

    def row(self, sequence_id: int, tokens, logprobs, entropies) -> None:
        self.writer.write(self.encode({"sequence_id": sequence_id, "tokens": _raw(tokens),
                                       "logprobs": _raw(logprobs), "entropies": _raw(entropies)}))

    def tensor(self, name: str, tensor) -> None:
        self.writer.write(self.encode({"name": name, "dtype": str(tensor.dtype), "shape": list(tensor.shape),
                                       "data": _raw(tensor)}))

    def close(self) -> None:
        self.writer.flush(zstandard.FLUSH_FRAME)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.writer.close()  # closes the file too
