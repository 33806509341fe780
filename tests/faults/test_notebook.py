"""A real Jupyter kernel: a run left open when the kernel shuts down or restarts gracefully is closed cleanly.

Researchers restart kernels all the time; the log must end with a complete footer and keep the record logged
just before the shutdown (well inside one flush interval).
"""

from __future__ import annotations

import os
import textwrap

import pytest

pytest.importorskip("ipykernel", reason="needs ipykernel (pip install asynclog[test])")
pytest.importorskip("jupyter_client", reason="needs jupyter_client (pip install asynclog[test])")

from jupyter_client.manager import start_new_kernel  # noqa: E402

import asynclog  # noqa: E402

_TIMEOUT_S = 30
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def kernel():
    """A real ipykernel running this interpreter, importing this worktree's asynclog."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))
    manager, client = start_new_kernel(kernel_name="python3", startup_timeout=_TIMEOUT_S, env=env)
    yield manager, client
    client.stop_channels()
    if manager.is_alive():
        manager.shutdown_kernel(now=True)


def _run_cell(client, code: str) -> None:
    reply = client.execute_interactive(textwrap.dedent(code), timeout=_TIMEOUT_S)
    assert reply["content"]["status"] == "ok", reply["content"]


def _open_run_and_log(client, path) -> None:
    _run_cell(client, f"""
        import asynclog
        run = asynclog.start(path={str(path)!r})
        for step in range(5):
            run.event("loss", step=step, value=1.0 / (step + 1))
    """)
    _run_cell(client, 'run.event("last", step=5)')  # shut down at once: well inside one flush interval


def _assert_closed_cleanly(path) -> None:
    with asynclog.open(path) as log:
        assert log.complete, log.footer
        names = [record["name"] for record in log.events()]
    assert names == ["loss"] * 5 + ["last"]


@pytest.mark.parametrize("stop", ["shutdown_kernel", "restart_kernel"])
def test_graceful_kernel_stop_closes_open_run(kernel, tmp_path, stop):
    manager, client = kernel
    path = tmp_path / "notebook.alog"
    _open_run_and_log(client, path)
    getattr(manager, stop)(now=False)
    _assert_closed_cleanly(path)
