"""A journal of every file operation a real workload made, and the images a power cut could leave of it.

The journal is read from ``strace -f`` rather than from a layer of Python wrappers: the package writes its
sidecars through a file object (``files.replacing`` hands out ``os.fdopen``), the dataset's parts through
pyarrow, and its logs from a writer process and a sync thread. A wrapper of ``os`` functions sees none of the
first two and needs a hook in every process; the system calls see all of them, from every process and thread,
with the production code untouched, in the order the kernel finished them. ``-xx`` prints every byte written
(and every path) as hex escapes, so the trace holds the data exactly; ``-y`` names the file behind each
descriptor. Each call is placed where it returned: an fsync counts only once it has, which is what a caller
can rely on. The cost is speed (the workload runs under ptrace, once per test session), and a write longer
than ``MAX_WRITE`` fails the parse rather than be cut.

The journal (``parse``) is a list of operations on inodes, under one root folder that existed before:
``Write`` (write, pwrite64, writev, pwritev), ``Truncate`` (ftruncate, truncate, O_TRUNC), ``Sync`` (fsync,
fdatasync, of a file or a folder), ``Names`` (create, mkdir, rename, link, unlink: entries set or removed in
folders, all at once) and ``Mark`` (the workload's ``access("/asynclog-mark/N")``: promise N had returned).

``crash_image`` builds what a disk could hold after a power cut at a point of the journal, under one of two
models:

- ``posix``: a file's data is durable up to its last completed fsync; each later write may be lost, torn at
  512-byte sector boundaries (each sector kept or not, a hole reading as zeros) and reordered with the other
  writes and truncations not yet synced. A folder's entries are durable up to its last fsync; each later
  change (a create, mkdir, rename, link, unlink) may or may not have reached it, and a rename lands whole or
  not at all. A folder whose own name was lost takes everything below it.
- ``ext4``: data as above; changes of names are journalled in order, so what survives is a prefix of them that
  reaches at least the last fsync of anything (an fsync commits the whole journal), and a rename over an
  existing file carries the data written before it (``auto_da_alloc``).
"""

from __future__ import annotations

import codecs
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import NamedTuple

SECTOR = 512
MARK = "/asynclog-mark/"
MODELS = ("posix", "ext4")
SYSCALLS = ("openat,open,creat,mkdir,mkdirat,rename,renameat,renameat2,link,linkat,unlink,unlinkat,rmdir,"
            "fsync,fdatasync,write,pwrite64,writev,pwritev,pwritev2,ftruncate,truncate,lseek,access")
MAX_WRITE = 1 << 24  # the longest string strace prints whole: a longer write fails the parse
ROOT = 0  # the inode of the root folder: it and its name were there before the workload


class Write(NamedTuple):
    inode: int
    offset: int
    data: bytes


class Truncate(NamedTuple):
    inode: int
    size: int


class Sync(NamedTuple):
    inode: int


class Names(NamedTuple):
    """Entries set (to an inode) or removed (None) in folders, by one call: ((folder, name, inode), ...); the
    folders it made."""
    changes: tuple[tuple[int, str, int | None], ...]
    folders: tuple[int, ...] = ()


class Mark(NamedTuple):
    number: int


class Disk(NamedTuple):
    """Folders' entries and files' bytes, by inode."""
    entries: dict[int, dict[str, int]]
    data: dict[int, bytearray]

    def paths(self) -> dict[str, int]:
        """The inode at every path reachable from the root, relative to it; a folder's path ends in '/'."""
        found, todo = {}, [("", ROOT)]
        while todo:
            prefix, folder = todo.pop()
            for name, inode in self.entries[folder].items():
                if inode in self.entries:
                    found[prefix + name + "/"] = inode
                    todo.append((prefix + name + "/", inode))
                else:
                    found[prefix + name] = inode
        return found


def record(argv: list[str], trace: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``argv`` under strace, writing the trace of the calls ``parse`` reads to ``trace``."""
    return subprocess.run(["strace", "-f", "-y", "-qq", "-xx", "-s", str(MAX_WRITE), "-o", trace,
                           "-e", f"trace={SYSCALLS}", *argv], capture_output=True, text=True, timeout=timeout)


# --- reading the trace ---------------------------------------------------------------------------------------
_LINE = re.compile(r"(\d+)\s+(.*)")
_CALL = re.compile(r"(\w+)\((.*)\)\s+=\s+(-?\d+)")
_FD = re.compile(r"(-?\d+|AT_FDCWD)<(.*)>(\(deleted\))?$")
_STRING = re.compile(r'"(.*)"$')
_IOV = re.compile(r'iov_base="([^"]*)"')


def strace_runs() -> bool:
    """strace is installed and may trace here (a container may forbid ptrace)."""
    if shutil.which("strace") is None:
        return False
    done = subprocess.run(["strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=fsync", "true"], capture_output=True)
    return done.returncode == 0


def complete_calls(text: str) -> Iterator[str]:
    """The trace's calls, each whole, at the place it returned (strace splits a call another thread
    interrupted into ``<unfinished ...>`` and ``<... name resumed>``)."""
    pending: dict[str, str] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        tid, rest = match.groups()
        if rest.endswith("<unfinished ...>"):
            pending[tid] = rest.removesuffix("<unfinished ...>").rstrip()
            continue
        resumed = re.match(r"<\.\.\. \w+ resumed>\s?(.*)", rest)
        yield pending.pop(tid, "") + resumed.group(1) if resumed else rest


def _calls(text: str) -> Iterator[tuple[str, list[str], int]]:
    """(name, arguments, result) of each call."""
    for rest in complete_calls(text):
        call = _CALL.match(rest)
        if call:
            yield call.group(1), _split(call.group(2)), int(call.group(3))


def _split(args: str) -> list[str]:
    """The top-level arguments (hex escapes leave no quote, comma or bracket inside a string)."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(args):
        if c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(args[start:i].strip())
            start = i + 1
    parts.append(args[start:].strip())
    return parts


def _bytes(escaped: str) -> bytes:
    return codecs.escape_decode(escaped.encode("latin-1"))[0]


def _text(escaped: str) -> str:
    return os.fsdecode(_bytes(escaped))


class _Parser:
    """Follows names, descriptors and file offsets through the trace; keeps what happened below ``root``."""

    def __init__(self, root: str):
        self.root = os.path.realpath(root)
        self.ops: list = []
        self.disk = Disk({ROOT: {}}, {})
        self.offsets: dict[tuple[int, int], int] = {}  # (inode, descriptor): the file offset
        self.next_inode = 1

    def lookup(self, path: str) -> int | None:
        if path != self.root and not path.startswith(self.root + "/"):
            return None
        inode = ROOT
        for name in filter(None, path[len(self.root):].split("/")):
            inode = self.disk.entries.get(inode, {}).get(name)
            if inode is None:
                return None
        return inode

    def place(self, path: str) -> tuple[int, str] | None:
        """(folder inode, name) for a path below the root whose folder is known."""
        folder = self.lookup(os.path.dirname(path))
        return None if folder is None or folder not in self.disk.entries else (folder, os.path.basename(path))

    def path(self, dirfd: str | None, name: str) -> str:
        if os.path.isabs(name) or dirfd is None:
            return os.path.normpath(name)
        return os.path.normpath(os.path.join(_text(_FD.match(dirfd).group(2)), name))

    def fd(self, arg: str) -> tuple[int, int | None]:
        """The descriptor and the inode below the root it names (None for a file elsewhere, or deleted)."""
        match = _FD.match(arg)
        if match is None or match.group(3):
            return -1, None
        return int(match.group(1)), self.lookup(_text(match.group(2)))

    def emit(self, op) -> None:
        self.ops.append(op)
        apply(self.disk, op)

    # one method per call; each gets the call's arguments and result
    def on_openat(self, args, result, dirfd=True):
        dirfd, args = (args[0], args[1:]) if dirfd else (None, args)
        path = self.path(dirfd, _text(_STRING.match(args[0]).group(1)))
        where = self.place(path)
        if where is None:
            return
        inode = self.lookup(path)
        if inode is None:
            if "O_CREAT" not in args[1]:
                return
            inode = self.new_inode(where, file=True)
        elif "O_TRUNC" in args[1] and inode not in self.disk.entries:
            self.emit(Truncate(inode, 0))
        self.offsets[(inode, result)] = 0

    def on_open(self, args, result):
        self.on_openat(args, result, dirfd=False)

    def on_creat(self, args, result):
        self.on_openat([args[0], "O_CREAT|O_TRUNC"], result, dirfd=False)

    def new_inode(self, where: tuple[int, str], file: bool) -> int:
        inode, self.next_inode = self.next_inode, self.next_inode + 1
        if file:
            self.disk.data[inode] = bytearray()
        else:
            self.disk.entries[inode] = {}
        self.emit(Names(((*where, inode),), () if file else (inode,)))
        return inode

    def on_mkdir(self, args, result, dirfd=False):
        dirfd, args = (args[0], args[1:]) if dirfd else (None, args)
        where = self.place(self.path(dirfd, _text(_STRING.match(args[0]).group(1))))
        if where is not None:
            self.new_inode(where, file=False)

    def on_mkdirat(self, args, result):
        self.on_mkdir(args, result, dirfd=True)

    def _two_paths(self, args, dirfds: bool):
        if dirfds:
            return (self.path(args[0], _text(_STRING.match(args[1]).group(1))),
                    self.path(args[2], _text(_STRING.match(args[3]).group(1))))
        return tuple(os.path.normpath(_text(_STRING.match(a).group(1))) for a in args[:2])

    def on_rename(self, args, result, dirfds=False, keep=False):
        old, new = self._two_paths(args, dirfds)
        inode, source, target = self.lookup(old), self.place(old), self.place(new)
        if inode is None or target is None:
            return
        changes = ((*target, inode),) if keep else ((*source, None), (*target, inode))
        self.emit(Names(changes))

    def on_renameat(self, args, result):
        self.on_rename(args, result, dirfds=True)

    on_renameat2 = on_renameat

    def on_link(self, args, result):
        self.on_rename(args, result, keep=True)

    def on_linkat(self, args, result):
        self.on_rename(args, result, dirfds=True, keep=True)

    def on_unlink(self, args, result, dirfd=False):
        dirfd, args = (args[0], args[1:]) if dirfd else (None, args)
        where = self.place(self.path(dirfd, _text(_STRING.match(args[0]).group(1))))
        if where is not None and where[1] in self.disk.entries[where[0]]:
            self.emit(Names(((*where, None),)))

    def on_unlinkat(self, args, result):
        self.on_unlink(args, result, dirfd=True)

    on_rmdir = on_unlink

    def _write(self, fd_arg: str, data: bytes, result: int, offset: int | None = None) -> None:
        fd, inode = self.fd(fd_arg)
        if inode is None or inode in self.disk.entries:
            return
        if len(data) < result:
            raise ValueError(f"a write of {result} bytes, {len(data)} in the trace: raise MAX_WRITE")
        at = self.offsets.get((inode, fd), 0) if offset is None else offset
        self.emit(Write(inode, at, data[:result]))
        if offset is None:
            self.offsets[(inode, fd)] = at + result

    def on_write(self, args, result):
        self._write(args[0], _bytes(_STRING.match(args[1]).group(1)), result)

    def on_pwrite64(self, args, result):
        self._write(args[0], _bytes(_STRING.match(args[1]).group(1)), result, int(args[3]))

    def on_writev(self, args, result):
        self._write(args[0], b"".join(_bytes(s) for s in _IOV.findall(args[1])), result)

    def on_pwritev(self, args, result):
        self._write(args[0], b"".join(_bytes(s) for s in _IOV.findall(args[1])), result, int(args[3]))

    on_pwritev2 = on_pwritev

    def on_ftruncate(self, args, result):
        _, inode = self.fd(args[0])
        if inode is not None and inode not in self.disk.entries:
            self.emit(Truncate(inode, int(args[1])))

    def on_truncate(self, args, result):
        inode = self.lookup(os.path.normpath(_text(_STRING.match(args[0]).group(1))))
        if inode is not None and inode not in self.disk.entries:
            self.emit(Truncate(inode, int(args[1])))

    def on_lseek(self, args, result):
        fd, inode = self.fd(args[0])
        if inode is not None:
            self.offsets[(inode, fd)] = result

    def on_fsync(self, args, result):
        _, inode = self.fd(args[0])
        if inode is not None:
            self.emit(Sync(inode))

    on_fdatasync = on_fsync

    def on_access(self, args, result):
        path = _text(_STRING.match(args[0]).group(1))
        if path.startswith(MARK):
            self.emit(Mark(int(path[len(MARK):])))

    def on_faccessat(self, args, result):
        self.on_access(args[1:], result)

    on_faccessat2 = on_faccessat


def parse(text: str, root: str) -> list:
    """The journal of what the trace did below ``root`` (a folder that existed, empty, before it started)."""
    parser = _Parser(root)
    for name, args, result in _calls(text):
        if result < 0 and not name.endswith("access"):
            continue  # a failed call changed nothing (a mark's access fails: there is no such file)
        handler = getattr(parser, "on_" + name, None)
        if handler is not None:
            handler(args, result)
    return parser.ops


# --- what a disk holds -------------------------------------------------------------------------------------
def apply(disk: Disk, op) -> None:
    """Do ``op`` to ``disk`` (a Sync or a Mark changes nothing); a write past the end leaves zeros before it."""
    if isinstance(op, Write):
        data = disk.data[op.inode]
        if len(data) < op.offset:
            data.extend(bytes(op.offset - len(data)))
        data[op.offset:op.offset + len(op.data)] = op.data
    elif isinstance(op, Truncate):
        data = disk.data[op.inode]
        del data[op.size:]
        data.extend(bytes(op.size - len(data)))
    elif isinstance(op, Names):
        for folder, name, inode in op.changes:
            if inode is None:
                disk.entries[folder].pop(name, None)
            else:
                disk.entries[folder][name] = inode


def replay(journal: list, upto: int) -> Disk:
    """What the disk holds, no power lost, after the journal's first ``upto`` operations."""
    disk = _empty(journal)
    for op in journal[:upto]:
        apply(disk, op)
    return disk


def _empty(journal: list) -> Disk:
    """Every folder the journal makes, empty, and every file, empty, with no name anywhere."""
    disk = Disk({ROOT: {}}, {})
    for op in journal:
        if isinstance(op, Names):
            disk.entries.update((inode, {}) for inode in op.folders)
            disk.data.update((inode, bytearray()) for _, _, inode in op.changes
                             if inode is not None and inode not in op.folders and inode not in disk.data)
    return disk


def marks(journal: list) -> dict[int, int]:
    """Where each mark is: its number, the journal's length up to and including it."""
    return {op.number: i + 1 for i, op in enumerate(journal) if isinstance(op, Mark)}


# --- what a power cut leaves -------------------------------------------------------------------------------
class Crash(NamedTuple):
    """One power cut: where, under which model, how much of what was not durable got through."""
    at: int
    model: str
    keep_data: float  # the chance a sector written since the file's last fsync reached the disk
    keep_names: float  # the chance a change of names reached its folder (posix) / where the journal stops (ext4)
    seed: int


def random_crash(journal: list, model: str, rng: random.Random) -> Crash:
    """A cut anywhere, or (half the time) just before an fsync returns, when the most is not yet durable."""
    def chance() -> float:
        return rng.choice((0.0, 1.0, rng.random(), rng.random()))
    syncs = [i for i, op in enumerate(journal) if isinstance(op, Sync)]
    at = rng.choice(syncs) if syncs and rng.random() < 0.5 else rng.randint(0, len(journal))
    return Crash(at, model, chance(), chance(), rng.getrandbits(32))


def crash_image(journal: list, crash: Crash) -> Disk:
    """What the disk may hold after a power cut at ``crash.at`` (see the module docstring)."""
    rng = random.Random(crash.seed)
    ops = journal[:crash.at]
    last_sync = {op.inode: i for i, op in enumerate(ops) if isinstance(op, Sync)}
    disk = _empty(journal)
    names = _names_kept(ops, last_sync, crash, rng)
    forced = _data_carried_by_renames(ops, names) if crash.model == "ext4" else set()
    pending = []
    for i, op in enumerate(ops):
        if isinstance(op, Names):
            if i in names:
                apply(disk, op)
        elif isinstance(op, (Write, Truncate)):
            if i < last_sync.get(op.inode, -1) or i in forced:
                apply(disk, op)
            else:
                pending.extend(_pieces(op))
    kept = [piece for piece in pending if rng.random() < crash.keep_data]
    rng.shuffle(kept)
    for piece in kept:
        apply(disk, piece)
    return disk


def _names_kept(ops: list, last_sync: dict[int, int], crash: Crash, rng: random.Random) -> set[int]:
    """The indices of the changes of names that reached the disk."""
    changes = [i for i, op in enumerate(ops) if isinstance(op, Names)]
    if crash.model == "ext4":
        committed = max(last_sync.values(), default=-1)
        uncommitted = [i for i in changes if i > committed]
        stop = round(len(uncommitted) * crash.keep_names)
        return {i for i in changes if i < committed} | set(uncommitted[:stop])
    return {i for i in changes
            if all(last_sync.get(folder, -1) > i for folder, _, _ in ops[i].changes) or rng.random() < crash.keep_names}


def _data_carried_by_renames(ops: list, names: set[int]) -> set[int]:
    """ext4's auto_da_alloc: a rename over an existing file that reached the disk carries the writes (and
    truncations) of the renamed file made before it."""
    forced, shadow = set(), _empty(ops)
    for i, op in enumerate(ops):
        if isinstance(op, Names) and i in names and len(op.changes) == 2:
            folder, name, inode = op.changes[1]
            if name in shadow.entries[folder]:
                forced.update(j for j in range(i) if isinstance(ops[j], (Write, Truncate)) and ops[j].inode == inode)
        if isinstance(op, Names):
            apply(shadow, op)
    return forced


def _pieces(op):
    """A write split at sector boundaries (each may reach the disk alone); a truncation whole."""
    if isinstance(op, Truncate):
        return [op]
    pieces, at = [], op.offset
    while at < op.offset + len(op.data):
        end = min((at // SECTOR + 1) * SECTOR, op.offset + len(op.data))
        pieces.append(Write(op.inode, at, op.data[at - op.offset:end - op.offset]))
        at = end
    return pieces


def materialize(disk: Disk, root: str) -> None:
    """Write the image's files and folders below ``root`` (an empty folder)."""
    for path, inode in sorted(disk.paths().items()):
        where = os.path.join(root, path)
        if path.endswith("/"):
            os.makedirs(where, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(where), exist_ok=True)
            with open(where, "wb") as f:
                f.write(disk.data[inode])
