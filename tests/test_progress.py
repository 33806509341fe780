"""Long work shows one updating line on a terminal's stderr, and nothing when stderr is piped."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

DEMO = [sys.executable, "-m", "asynclog", "demo", "--size", "tiny", "--level", "minimal"]


def _on_a_terminal(args: list[str], timeout: float = 120) -> tuple[int, str, str]:
    """Run ``args`` with stderr on a pseudo-terminal: (exit code, stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    child = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    shown, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not select.select([master], [], [], 1)[0]:
            continue
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        shown.append(data)
    os.close(master)
    out = child.communicate(timeout=timeout)[0]
    return child.returncode, out.decode(), b"".join(shown).decode(errors="replace")


def test_demo_shows_its_phase_on_a_terminal(tmp_path):
    code, out, shown = _on_a_terminal(DEMO + ["--out", str(tmp_path)])
    assert code == 0, shown
    assert "\r" in shown and "step_000" in shown and "phase0_sampling" in shown
    assert shown.rstrip().endswith("\x1b[K") or "\x1b[K" in shown  # the line is cleared, not left behind
    assert "phase0_sampling" not in out


def test_demo_is_quiet_when_stderr_is_piped(tmp_path):
    done = subprocess.run(DEMO + ["--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\x1b" not in done.stderr and "phase0_sampling" not in done.stderr


def test_a_status_line_is_redrawn_in_place_and_cleared(tmp_path):
    code = ("import time; from asynclog.probe.progress import Status\n"
            "with Status() as line:\n"
            "    line.show('asynclog bench: tensorboard small'); time.sleep(1.3)\n"
            "print('done')\n")
    code_, out, shown = _on_a_terminal([sys.executable, "-c", code])
    assert code_ == 0 and out == "done\n"
    drawn = shown.split("\r")
    assert sum("tensorboard small" in part for part in drawn) >= 2  # redrawn while the work runs
    assert drawn[-1] == "\x1b[K"  # and the line cleared at the end
