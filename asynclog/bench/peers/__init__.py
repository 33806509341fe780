"""The peers asynclog is compared with, one small adapter module each, in the order the table shows them."""

from __future__ import annotations

import importlib
import importlib.util

from asynclog.bench.peers._base import Adapter

__all__ = ["PEERS", "Adapter", "load", "missing"]

# name -> "module:Class"; the runner imports a peer's module only inside that peer's own subprocess.
PEERS = {
    "asynclog": "asynclog_run:AsyncLog",
    "sync": "sync_floor:SyncFloor",
    "naive": "naive:Naive",
    "stdlib": "stdlib_queue:StdlibQueue",
    "tensorboard": "tensorboard_writer:TensorBoard",
    "wandb": "wandb_offline:WandbOffline",
    "loguru": "loguru_file:Loguru",
    "torch_save": "torch_save:TorchSave",
}


def load(key: str) -> type[Adapter]:
    """The adapter class of peer ``key`` (imports its module, not the tool it drives)."""
    module, _, cls = PEERS[key].partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def missing(adapter: type[Adapter]) -> list[str]:
    """The modules ``adapter`` requires that are not installed (found without importing them)."""
    return [name for name in adapter.requires if importlib.util.find_spec(name) is None]
