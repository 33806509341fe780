"""The wire between the probe's process and the writer process: one msgspec Struct per message.

Both sides import this module and nothing of each other. Every message is a msgpack array whose first
element is its tag (``Op``), then its fields in order (``array_like``), so a message costs what the old
positional lists cost while each field has a name and a type the decoder checks.

Probe -> writer, on the data pipe::

    Open(ask, run, path, start_len, sidecar, options, folders)  take over the file the probe started
    Records(run, count, body, inline)                           a batch of encoded records (+ small tensors)
    Staged(run, frame, offset, nbytes, mark)                    a frame whose body sits in the staging pool
    Sync(ask, run, durable)                                     answered once all before it is written (+fsync)
    Close(ask, run, footer)                                     footer, trailer, fsync, close
    Shutdown()                                                  finish every open run and exit

Writer -> probe, on the back pipe::

    Ready(pid, host, wire_version)     the handshake
    Done(ask, value)                   the answer to a request (Sync, Close; an Open with ask > 0)
    Failed(run, ask, message, errno)   a run failed (ask > 0: that request) or, with run 0, the writer did

``start()`` writes the file's preamble and header frame itself (``start_len`` bytes) and hands over ``Open``
without waiting (on the new writer's command line when that start() spawned it): the writer appends after
them, so a file exists and reads as a run from the moment ``start()`` returns, whether or not the writer is
up yet.

Frame meta travels as ``msgspec.Raw``: encoded once by the probe and written by the writer as it came.
The few facts the writer needs for its footer index ride beside it in ``FrameSpec``.
"""

from __future__ import annotations

import enum
from typing import Any, Union

import msgspec

__all__ = [
    "WIRE_VERSION", "Op", "FrameSpec", "RunOptions", "WriterOptions", "Open", "Records", "Staged", "Sync", "Close", "Shutdown",
    "Ready", "Done", "Failed", "encode", "probe_decoder", "writer_decoder",
]


WIRE_VERSION = 5  # bumped whenever a message changes; the handshake refuses a writer that speaks another


class Op(enum.IntEnum):
    """Message tags: the first element of every message on either pipe."""

    OPEN = 1
    RECORDS = 2
    STAGED = 3
    CLOSE = 4
    SHUTDOWN = 5
    SYNC = 6
    READY = 10
    DONE = 11
    FAILED = 13


class _Message(msgspec.Struct, array_like=True, tag_field="op", frozen=True):
    pass


class FrameSpec(msgspec.Struct, array_like=True, frozen=True):
    """One frame to build: its kind, its pre-encoded meta, and what the footer index files it under.

    ``key`` is a tensor's or stream's name ("" for records), ``group`` a tensor's id among repeats of its
    name; ``itemsize``/``shuffle`` tell the filter it may byte-shuffle an array of floats.
    """

    kind: int
    meta: msgspec.Raw
    key: str = ""
    group: int = 0
    itemsize: int = 0
    shuffle: bool = False


# The options below have no defaults of their own: the probe fills every field from ``Config``, the one home of
# every default, so a writer never runs with a value the user did not configure.
class RunOptions(msgspec.Struct, array_like=True, frozen=True):
    """How one run's frames are compressed (``Config``'s compression, zstd_level, min_ratio)."""

    compression: str
    zstd_level: int
    min_ratio: float


class WriterOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a writer process runs: its last command-line argument, msgpack as hex (the writer reads it before any
    pipe is up). ``first_open`` is the encoded ``Open`` of the run whose ``start()`` spawned it, or None."""

    compress_threads: int  # 0: picked from the cores available
    fsync_interval_s: float
    grace_s: float
    nice: int
    probe_pid: int
    first_open: Union[bytes, None] = None

    def to_argument(self) -> str:
        return encode(self).hex()

    @classmethod
    def from_argument(cls, argument: str) -> "WriterOptions":
        return msgspec.msgpack.decode(bytes.fromhex(argument), type=cls)


NO_ANSWER = 0  # the ``ask`` of a message nobody waits on (asks from Channel.new_ask start at 1)


class Open(_Message, tag=int(Op.OPEN)):
    ask: int
    run: int
    path: str
    start_len: int  # the preamble and header frame the probe wrote: the writer appends after exactly these
    sidecar: Union[dict, None]
    options: RunOptions
    # What to fsync for the file's name to survive a power loss (``files.folders_to_sync``): the writer does it
    # before its first durable sync or the close returns.
    folders: list[str] = []


class Records(_Message, tag=int(Op.RECORDS)):
    run: int
    count: int
    body: bytes
    inline: list[tuple[FrameSpec, bytes]] = []


class Staged(_Message, tag=int(Op.STAGED)):
    run: int
    frame: FrameSpec
    offset: int
    nbytes: int
    mark: int


class Sync(_Message, tag=int(Op.SYNC)):
    ask: int
    run: int
    durable: bool


class Close(_Message, tag=int(Op.CLOSE)):
    ask: int
    run: int
    footer: dict


class Shutdown(_Message, tag=int(Op.SHUTDOWN)):
    pass


class Ready(_Message, tag=int(Op.READY)):
    pid: int
    host: str
    wire_version: int


class Done(_Message, tag=int(Op.DONE)):
    ask: int
    value: Any = None


class Failed(_Message, tag=int(Op.FAILED)):
    run: int  # 0: the writer itself failed
    ask: int  # 0: not the answer to a request
    message: str
    errno: Union[int, None] = None


ProbeMessage = Union[Open, Records, Staged, Sync, Close, Shutdown]
WriterMessage = Union[Ready, Done, Failed]

encode = msgspec.msgpack.Encoder().encode
probe_decoder = msgspec.msgpack.Decoder(ProbeMessage)  # used by the writer: what the probe sends
writer_decoder = msgspec.msgpack.Decoder(WriterMessage)  # used by the probe: what the writer sends
