"""README.md runs as written: every shell command in it works right after the README's own first command.

The first ```bash block is the set-up (``bash scripts/setup.sh && .venv/bin/asynclog demo ...``) and the test
command itself: this test does not re-run them (setting up a venv, or running the suite inside the suite).
It runs the first command's demo part instead, at ``--size tiny`` so it stays short, then every line of every
other ```bash block, in order, in one ``bash -euo pipefail`` in that folder, and names the line that failed.
``.venv/bin/asynclog`` is this interpreter's ``python -m asynclog`` (from this checkout).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)
_MARK = "@@readme-line "


def bash_blocks() -> list[list[str]]:
    """The README's ```bash blocks, each as its command lines (blank lines and whole-line comments dropped)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    blocks = []
    for body in _BLOCK.findall(text):
        blocks.append([line for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#")])
    return blocks


def as_here(line: str) -> str:
    """The line with the checkout's console script replaced by this interpreter running this checkout."""
    python = shlex.quote(sys.executable)
    here = {"asynclog": f"{python} -m asynclog", "python": python}
    return _VENV_TOOL.sub(lambda m: here[m.group(1)], line)


_VENV_TOOL = re.compile(r"(?<![\w/.])\.venv/bin/(asynclog|python)\b")


def demo_part(first_line: str) -> str:
    """``.venv/bin/asynclog demo ...`` from the README's first line, made tiny."""
    command = first_line.split("#")[0].split("&&")[-1].strip()
    assert command.startswith(".venv/bin/asynclog demo"), f"the README's first command changed: {first_line}"
    return as_here(command) + " --size tiny"


def script(lines: list[str]) -> str:
    """One bash script that announces each README line on stderr before running it."""
    return "".join(f"echo {shlex.quote(_MARK + line)} >&2\n{as_here(line)}\n" for line in lines)


def failed_line(stderr: str) -> str:
    marks = [line[len(_MARK):] for line in stderr.splitlines() if line.startswith(_MARK)]
    return marks[-1] if marks else "(before the first line)"


@pytest.mark.skipif(shutil.which("jq") is None, reason="the README pipes into jq, which is not installed")
def test_every_readme_shell_command_runs_after_the_first(tmp_path):
    first, *rest = bash_blocks()
    lines = [line for block in rest for line in block]
    assert lines, "the README shows no shell commands after its first block"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    demo = subprocess.run(["bash", "-euo", "pipefail", "-c", demo_part(first[0])], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, f"the README's first command failed:\n{demo.stderr}"
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script(lines)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (f"README line failed (exit {done.returncode}): {failed_line(done.stderr)}\n"
                                  f"{done.stderr[-2000:]}")
