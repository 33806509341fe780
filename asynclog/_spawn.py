"""Starting the writer process and reading its handshake (``Channel`` owns what comes after).

The writer is started as ``python -m asynclog._writer`` rather than with multiprocessing, so it never re-imports
the probe's ``__main__`` or torch. The parent closes its copies of the child's pipe ends at once, so the child's
death shows as end-of-file on ``back`` the moment it happens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from multiprocessing.connection import Connection

import msgspec

from asynclog import _wire as wire
from asynclog._staging import StagingPool
from asynclog.errors import WriterError

__all__ = ["spawn_writer", "handshake", "kill"]

# ``python -m asynclog._writer``, minus the working directory on sys.path: an ``asynclog`` folder where the probe
# happens to run (a checkout of another version) must not become the writer. PYTHONPATH points at our package.
# Group signals (Ctrl-C, a scheduler's or a notebook's SIGTERM) are blocked from the writer's birth (the spawn
# happens with them blocked, and the mask survives exec), then ignored first thing and unblocked, so one that
# lands while the interpreter starts is ignored too: the writer's own handlers (writer.main) take over later.
_GROUP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_WRITER_MAIN = ("import signal, sys; s = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP); "
                "[signal.signal(n, signal.SIG_IGN) for n in s]; signal.pthread_sigmask(signal.SIG_UNBLOCK, s); "
                "del sys.path[0]; import runpy; "
                "runpy.run_module('asynclog._writer', run_name='__main__', alter_sys=True)")
_HANDSHAKE_TIMEOUT_S = 30.0
_POLL_S = 0.05


def spawn_writer(pool: StagingPool, options: wire.WriterOptions) -> tuple[subprocess.Popen, Connection, Connection]:
    """A new writer process sharing ``pool``, and the probe's ends of its pipes: (process, data, back)."""
    data_r, data_w = os.pipe()
    try:
        back_r, back_w = os.pipe()
    except OSError:
        _close_all(data_r, data_w)
        raise
    args = [sys.executable, "-c", _WRITER_MAIN, str(data_r), str(back_w), str(pool.fd), str(pool.capacity),
            options.to_argument()]
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _GROUP_SIGNALS)  # inherited: see _WRITER_MAIN
    try:
        process = subprocess.Popen(args, pass_fds=(data_r, back_w, pool.fd), env=env, stdin=subprocess.DEVNULL)
    except BaseException:
        _close_all(data_w, back_r)
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        _close_all(data_r, back_w)  # the child's ends: see the module docstring
    return process, Connection(data_w, readable=False), Connection(back_r, writable=False)


def handshake(process: subprocess.Popen, back: Connection) -> None:
    """Wait for the writer's ``Ready``; a WriterError (and the writer killed) if none comes."""
    deadline = time.monotonic() + _HANDSHAKE_TIMEOUT_S
    while not back.poll(_POLL_S):
        if process.poll() is not None or time.monotonic() > deadline:
            kill(process)
            raise WriterError(f"writer process failed to start (exit code {process.returncode})", process.returncode)
    try:
        ready = wire.writer_decoder.decode(back.recv_bytes())
    except (EOFError, OSError):  # it exited before answering: its own error went to stderr
        kill(process)
        raise WriterError(f"writer process failed to start (exit code {process.returncode}; "
                          f"its error, if any, is on stderr)", process.returncode) from None
    except msgspec.DecodeError:
        ready = None
    if not isinstance(ready, wire.Ready) or ready.wire_version != wire.WIRE_VERSION:
        kill(process)
        raise WriterError(f"writer process failed its handshake (exit code {process.returncode}; "
                          f"answered {ready!r}, expected wire version {wire.WIRE_VERSION})", process.returncode)


def kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


def _close_all(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
