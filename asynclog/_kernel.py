"""Hooks for interactive kernels: close open runs when a Jupyter kernel shuts down or restarts gracefully.

Why atexit is not enough there: on a shutdown request (a restart is one too) ipykernel first calls
``do_shutdown``, then SIGTERMs every child process in its process group (``_at_shutdown`` ->
``_progressively_terminate_all_children``), and only then lets the interpreter exit. The writer process is such a
child, so by the time atexit runs it is dead: no footer, and the last flush interval's records are lost.
``do_shutdown`` is ipykernel's documented hook for frontend shutdowns, and it runs before the children are
signalled, so open runs are closed there.

ipykernel is imported only when it is already in ``sys.modules`` (inside a kernel), so a plain script pays one
dict lookup per ``start``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["close_on_kernel_shutdown"]

_MARK = "_asynclog_close_on_shutdown"


def close_on_kernel_shutdown(shutdown: Callable[[], None]) -> None:
    """If this process is a running ipykernel, call ``shutdown`` when the kernel is asked to shut down or
    restart, before ipykernel terminates its child processes. Idempotent; a no-op outside a kernel."""
    if "ipykernel" not in sys.modules:
        return
    kernel = _running_kernel()
    if kernel is None or getattr(kernel, _MARK, False):
        return
    do_shutdown = kernel.do_shutdown

    def close_then_shut_down(restart: bool):
        # Not async itself: the original may be a coroutine function (ipykernel 7) or not (6), and
        # ipykernel awaits whatever comes back when it is awaitable.
        try:
            shutdown()
        except Exception:  # noqa: BLE001 - the kernel must shut down whatever closing raised; say so in its log
            kernel.log.exception("asynclog could not close its open runs")
        return do_shutdown(restart)

    kernel.do_shutdown = close_then_shut_down
    setattr(kernel, _MARK, True)


def _running_kernel():
    try:
        from ipykernel.kernelbase import Kernel
    except ImportError:  # a half-installed or unrelated module named ipykernel
        return None
    return Kernel.instance() if Kernel.initialized() else None
