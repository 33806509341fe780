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

DetailedLogger names its run folders from a name every rank shares, and logs how it found it
(``SharedName.source``): one given to it; else one the launcher put in every rank's environment
(``launcher_name``); else, only when asked, one broadcast from rank 0 (``broadcast_from_rank0``, the single
collective, opt-in); else one for this launch (``launch_name``): torchrun's launch folder, alike on every
rank of a one-node launch, or one rank 0 writes into the process group's store, where the other ranks read
it (no collective: rank 0 never waits, the others wait a bounded time for rank 0's first run); else
``no_shared_name`` is the error to raise.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import NamedTuple, TypeVar

import msgspec

from asynclog._files import atomic_write
from asynclog._ondisk import MANIFEST, SHARD_STEM, SHARDS_ID, run_folder, shard_name, shard_stem
from asynclog.errors import LogInputError

__all__ = ["Placement", "placement", "per_rank_staging", "shard_name", "shard_stem", "SHARD_STEM", "MANIFEST",
           "SHARDS_ID", "write_manifest", "read_manifest", "RUN_NAME_ENV", "SharedName", "launcher_name", "job_name",
           "broadcast_from_rank0", "launch_name", "torchrun_launch_name", "store_name", "agree_through_store",
           "STORE_WAIT_S", "no_shared_name"]

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


def write_manifest(folder: str, name: str, where: Placement) -> None:
    """Rank 0's note of what the run folder should hold; written once, atomically."""
    manifest = {"format": SHARDS_ID, "name": name, "world_size": where.world_size, "created": time.time(),
                "shards": [shard_name(r) for r in range(where.world_size)]}
    atomic_write(os.path.join(folder, MANIFEST), msgspec.json.format(msgspec.json.encode(manifest), indent=2))


def read_manifest(folder: str):
    """The run folder's manifest (``ondisk.Manifest``), or None when there is none (rank 0 never started), it is
    not one of ours, or it is damaged (``ondisk.run_folder`` says why)."""
    found = run_folder(folder)
    return None if found is None else found.manifest


# --- a name every rank shares ------------------------------------------------------------------------------
RUN_NAME_ENV = "ASYNCLOG_RUN_NAME"  # a launcher (a job script) may export the run's name to every rank


class SharedName(NamedTuple):
    """A run's name that every rank of the job finds, and how it was found: ``source`` is ``"run_name"``, the
    environment variable it came from, ``"broadcast_name"`` or ``"process_group_store"`` (logged as the
    run's ``name_source``)."""

    name: str
    source: str


def launcher_name(environ: dict | None = None) -> SharedName | None:
    """The job's name as every rank of it finds it in its environment, or None.

    ``ASYNCLOG_RUN_NAME``; else torchrun's ``TORCHELASTIC_RUN_ID`` (its rendezvous id: not "none", the
    default that every job without ``--rdzv-id``/``--standalone`` shares), else SLURM's ``SLURM_JOB_ID``
    (unique per array task) with ``SLURM_STEP_ID``. A restarted job (``TORCHELASTIC_RESTART_COUNT``,
    ``SLURM_RESTART_COUNT`` above 0) gets ``-restartN``, so it does not run into the folders of its first try.
    """
    env = os.environ if environ is None else environ
    if env.get(RUN_NAME_ENV):
        return SharedName(env[RUN_NAME_ENV], RUN_NAME_ENV)
    run_id = env.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        return SharedName(_restarted(f"torchrun-{run_id}", env.get("TORCHELASTIC_RESTART_COUNT")),
                          "TORCHELASTIC_RUN_ID")
    job = env.get("SLURM_JOB_ID")
    if job:
        step = env.get("SLURM_STEP_ID")
        return SharedName(_restarted(f"slurm-{job}" + (f".{step}" if step else ""), env.get("SLURM_RESTART_COUNT")),
                          "SLURM_JOB_ID")
    return None


def job_name(environ: dict | None = None) -> str | None:
    """``launcher_name``'s name alone."""
    found = launcher_name(environ)
    return None if found is None else found.name


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


# --- a name for this launch, when the launcher named none ----------------------------------------------------
STORE_WAIT_S = 300.0  # how long a rank above 0 waits for rank 0 to write the launch's name into the store
_STORE_KEY = "asynclog/run_name/attempt_{}"
_agreed: dict[tuple[int, str], str] = {}  # (rank, store key) -> the name agreed; one per process and launch


def launch_name(where: Placement, environ: dict | None = None, timeout: float = STORE_WAIT_S) -> SharedName | None:
    """A name for this launch of the job, alike on every rank: torchrun's launch folder when one holds every
    rank (``torchrun_launch_name``, nothing asked of anyone), else one agreed through the process group's
    store (``store_name``); None when there is neither."""
    return torchrun_launch_name(where, environ) or store_name(where, environ, timeout)


def torchrun_launch_name(where: Placement, environ: dict | None = None) -> SharedName | None:
    """``torchrun-<letters>``, from the folder torchrun made for this launch, when every rank is in it.

    torchrun's agent makes one folder per launch with ``tempfile.mkdtemp`` (``<run id>_<letters>``, in
    ``--log-dir`` or in a fresh ``$TMPDIR/torchelastic_<letters>``), so no other launch on the node has it
    while it exists, and gives each of its workers an error file inside it:
    ``TORCHELASTIC_ERROR_FILE=<folder>/attempt_<restart>/<local rank>/error.json``. Each node's agent makes
    its own folder, so it names the job only when one agent runs every rank (``LOCAL_WORLD_SIZE`` equals
    ``WORLD_SIZE``, and this process is torchrun's ``RANK`` of that world). The folder outlives a restart,
    so a restarted launch gets ``-restartN``. None for any other path (``--log-dir /dev/null`` gives none).
    """
    env = os.environ if environ is None else environ
    path = env.get("TORCHELASTIC_ERROR_FILE")
    one_agent = env.get("WORLD_SIZE") == env.get("LOCAL_WORLD_SIZE") == str(where.world_size)
    if not (path and one_agent and env.get("RANK") == str(where.rank)):
        return None
    restart = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    rest, leaf = os.path.split(path)
    rest, local_rank = os.path.split(rest)
    folder, attempt = os.path.split(rest)
    letters = os.path.basename(folder).removeprefix(f"{env.get('TORCHELASTIC_RUN_ID', 'none')}_")
    if (leaf, local_rank, attempt) != ("error.json", env.get("LOCAL_RANK"), f"attempt_{restart}") or not letters:
        return None
    return SharedName(_restarted(f"torchrun-{letters}", restart), "TORCHELASTIC_ERROR_FILE")


def store_name(where: Placement, environ: dict | None = None, timeout: float = STORE_WAIT_S) -> SharedName | None:
    """The name rank 0 of the initialised process group wrote into the group's store for this launch
    (``agree_through_store``); None without a process group, or when ``where`` is not its rank and size.

    The store is the one ``init_process_group`` made (torchrun's agent store, a ``tcp://`` or ``file://``
    one): shared by every rank of every node and by no other launch. Its key carries torchrun's restart
    count, since the agent's store outlives a restart: a restarted launch agrees on a new name."""
    dist = _initialised_process_group()
    if dist is None or (dist.get_rank(), dist.get_world_size()) != where:
        return None
    default_store = getattr(dist.distributed_c10d, "_get_default_store", None)
    if default_store is None:
        return None
    env = os.environ if environ is None else environ
    key = _STORE_KEY.format(env.get("TORCHELASTIC_RESTART_COUNT", "0"))
    return SharedName(agree_through_store(default_store(), where.rank, key, timeout), "process_group_store")


def agree_through_store(store, rank: int, key: str, timeout: float = STORE_WAIT_S) -> str:
    """One name for ``key``, alike on every rank: rank 0 makes it (its local time and six random hex digits)
    and ``set``s it, which waits for no other rank; another rank reads it, waiting at most ``timeout``
    seconds for rank 0 to get there, then raises a LogInputError rather than wait on.

    Made and read once per process: the launch's later runs are told apart as the runs of any shared name
    are (by checkpoint, then ``-1``, ``-2``). Rank 0 sets its name again at every call, so a process group
    made anew in the same process finds it."""
    name = _agreed.get((rank, key))
    if rank == 0:
        name = name or f"{time.strftime('%H-%M-%S')}-{secrets.token_hex(3)}"
        store.set(key, name)
    elif name is None:
        try:
            store.wait([key], timedelta(seconds=timeout))
        except RuntimeError as exc:  # torch's DistStoreError, or a FileStore's RuntimeError
            raise LogInputError(
                f"rank {rank}: rank 0 did not name the run in the process group's store within {timeout:g} s "
                f"({type(exc).__name__}: {exc}). Does rank 0 log too (a DetailedLogger and log_run_start)? "
                f"Else give every rank the name: run_name= or {RUN_NAME_ENV}.") from None
        name = store.get(key).decode()
    _agreed[(rank, key)] = name
    return name


def no_shared_name(where: Placement) -> LogInputError:
    """The error for a rank of a job that has no name all its ranks share (a clock-made name would split the
    run into one folder per rank)."""
    return LogInputError(
        f"rank {where.rank} of {where.world_size}: the ranks of a job log one run, in one folder, so its name "
        "must be the same on every rank, and a name made from each rank's clock is not. Give one of: "
        "run_name= (DetailedLogger or log_run_start, the same on every rank); a name in every rank's "
        f"environment ({RUN_NAME_ENV}, torchrun's TORCHELASTIC_RUN_ID with --rdzv-id or --standalone, or "
        "SLURM_JOB_ID); broadcast_name=True (one broadcast from rank 0 per run, a collective every rank must "
        "reach); or torch.distributed's process group, initialised before log_run_start (rank 0 names the "
        "launch in its store).")
