"""Runs of a ``torch.distributed`` job: one run folder, one shard per rank, no collective call.

Layout of a run whose world has more than one rank::

    <directory>/<name>/
    ├── rank-00000.alog      each rank's own log, written through that rank's own writer process
    ├── rank-00001.alog
    ├── ...
    └── manifest.json        written by rank 0 at start: world size, the shards to expect

Every rank finds the same folder on its own (``name`` is required: ranks start at different moments, so
a name made from the time would differ), so asynclog never calls a collective — a logger must not
deadlock a job whose ranks diverge. Which shards are complete is read from their footers at read time
(``asynclog.open(folder)``), so a rank that was killed shows as incomplete while the others stay intact.
Each shard's header holds ``rank`` and ``world_size``.

DetailedLogger names its run folders from a name every rank shares (``shared_run_name``): one given to it,
else one the launcher put in every rank's environment (``job_name``), else, only when asked, one
broadcast from rank 0 (``broadcast_from_rank0``, the single collective, opt-in); else ``no_shared_name``
is the error to raise.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import msgspec

from .errors import LogInputError
from .files import atomic_write
from .format import SUFFIX

__all__ = ["Placement", "placement", "per_rank_staging", "shard_name", "shard_stem", "SHARD_STEM", "MANIFEST",
           "SHARDS_ID", "write_manifest", "read_manifest", "RUN_NAME_ENV", "job_name", "broadcast_from_rank0",
           "no_shared_name"]

MANIFEST = "manifest.json"
SHARDS_ID = "asynclog.shards/1"
_T = TypeVar("_T")


class Placement(NamedTuple):
    rank: int
    world_size: int


def placement(rank: int | None, world_size: int | None) -> Placement | None:
    """This process's rank and world size: as given, else from ``torch.distributed`` when it is initialised;
    None for a single-process run (no rank given and no initialised process group, or a world of one)."""
    if rank is None and world_size is None:
        dist = _initialised_process_group()
        if dist is None:
            return None
        rank, world_size = dist.get_rank(), dist.get_world_size()
    if rank is None or world_size is None:
        raise LogInputError("pass both rank= and world_size=, or neither (then torch.distributed's are used)")
    if not (isinstance(rank, int) and isinstance(world_size, int) and 0 <= rank < world_size):
        raise LogInputError(f"rank must be an int in 0..world_size-1, got rank={rank!r}, world_size={world_size!r}")
    return Placement(rank, world_size) if world_size > 1 else None


def _initialised_process_group():
    torch = sys.modules.get("torch")  # a process that never imported torch has no process group
    if torch is None:
        return None
    dist = getattr(torch, "distributed", None)
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist


NODE_STAGING_BUDGET = 768 << 20  # shared memory all ranks of one node take by default, all pools together
_MIN_STAGING = 16 << 20


def per_rank_staging(where: Placement, default: int) -> int:
    """The staging pool of one rank when the config leaves it at its default: the node budget shared by the
    ranks on this node (``LOCAL_WORLD_SIZE``, set by torchrun; else the whole world), at most the default.

    8 ranks on a node: 8 x 96 MiB = 768 MiB, where 8 default pools would take 2 GiB."""
    try:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", where.world_size))
    except ValueError:
        local = where.world_size
    share = NODE_STAGING_BUDGET // max(1, local) // (1 << 20) << 20
    return max(_MIN_STAGING, min(default, share))


SHARD_STEM = r"rank-\d{5,}"  # what shard_stem makes, as a regular expression: ranks past 99999 take more digits


def shard_stem(rank: int) -> str:
    """A rank's name in its run folder: its shard is this plus ``.alog``, its summary sidecar this plus
    ``_summary.json``."""
    return f"rank-{rank:05d}"


def shard_name(rank: int) -> str:
    return shard_stem(rank) + SUFFIX


def write_manifest(folder: str, name: str, where: Placement) -> None:
    """Rank 0's note of what the run folder should hold; written once, atomically."""
    manifest = {"format": SHARDS_ID, "name": name, "world_size": where.world_size, "created": time.time(),
                "shards": [shard_name(r) for r in range(where.world_size)]}
    atomic_write(os.path.join(folder, MANIFEST), msgspec.json.format(msgspec.json.encode(manifest), indent=2))


def read_manifest(folder: str) -> dict | None:
    """The manifest, or None when there is none (rank 0 never started) or it is not one of ours."""
    try:
        with open(os.path.join(folder, MANIFEST), "rb") as f:
            manifest = msgspec.json.decode(f.read(1 << 20))
    except (OSError, msgspec.DecodeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != SHARDS_ID:
        return None
    return manifest


# --- a name every rank shares ------------------------------------------------------------------------------
RUN_NAME_ENV = "ASYNCLOG_RUN_NAME"  # a launcher (a job script) may export the run's name to every rank


def job_name(environ: dict | None = None) -> str | None:
    """The job's name as every rank of it finds it in its environment, or None.

    ``ASYNCLOG_RUN_NAME``; else torchrun's ``TORCHELASTIC_RUN_ID`` (its rendezvous id: not "none", the
    default that every job without ``--rdzv-id``/``--standalone`` shares), else SLURM's ``SLURM_JOB_ID``
    (unique per array task) with ``SLURM_STEP_ID``. A restarted job (``TORCHELASTIC_RESTART_COUNT``,
    ``SLURM_RESTART_COUNT`` above 0) gets ``-restartN``, so it does not run into the folders of its first try.
    """
    env = os.environ if environ is None else environ
    if env.get(RUN_NAME_ENV):
        return env[RUN_NAME_ENV]
    run_id = env.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        return _restarted(f"torchrun-{run_id}", env.get("TORCHELASTIC_RESTART_COUNT"))
    job = env.get("SLURM_JOB_ID")
    if job:
        step = env.get("SLURM_STEP_ID")
        return _restarted(f"slurm-{job}" + (f".{step}" if step else ""), env.get("SLURM_RESTART_COUNT"))
    return None


def _restarted(name: str, count: str | None) -> str:
    return f"{name}-restart{count}" if count and count.isdigit() and int(count) > 0 else name


def broadcast_from_rank0(make: Callable[[], _T], what: str) -> _T:
    """``make()``'s value, made on rank 0 only, on every rank: one ``broadcast_object_list``, the one
    collective asynclog makes, and only when the user asked for it (``broadcast_name=True``).

    No process group is an error before rank 0 makes anything (a folder made for nothing would stay).
    When ``make`` fails on rank 0, the failure is broadcast in the value's place, so every rank raises a
    LogInputError saying that rank 0 could not ``what``, and none waits forever."""
    dist = _initialised_process_group()
    if dist is None:
        raise LogInputError("broadcast_name=True needs torch.distributed's process group, initialised before "
                            "log_run_start")
    box: list = [(None, None)]
    if dist.get_rank() == 0:
        try:
            box[0] = (make(), None)
        except Exception as exc:  # noqa: BLE001 - whatever it is, the other ranks must hear of it, not wait
            box[0] = (None, f"{type(exc).__name__}: {exc}")
    dist.broadcast_object_list(box, src=0)
    value, error = box[0]
    if error is not None:
        raise LogInputError(f"rank 0 could not {what}: {error}")
    return value


def no_shared_name(where: Placement) -> LogInputError:
    """The error for a rank of a job that has no name all its ranks share (a clock-made name would split the
    run into one folder per rank)."""
    return LogInputError(
        f"rank {where.rank} of {where.world_size}: the ranks of a job log one run, in one folder, so its name "
        "must be the same on every rank, and a name made from each rank's clock is not. Give one of: "
        "run_name= (DetailedLogger or log_run_start, the same on every rank); a name in every rank's "
        f"environment ({RUN_NAME_ENV}, torchrun's TORCHELASTIC_RUN_ID with --rdzv-id or --standalone, or "
        "SLURM_JOB_ID); or broadcast_name=True (one broadcast from rank 0 per run, a collective every rank must "
        "reach).")
