"""README.md and docs/*.md run as written: every shell and Python block works right after the README's first command.

The README's first ```bash block is the set-up (``bash scripts/setup.sh && .venv/bin/asynclog demo ...``) and the
test command itself: this test does not re-run them (setting up a venv, or running the suite inside the suite). It
runs the first command's demo part once instead, at ``--size tiny`` so it stays short, in a folder whose
``.venv/bin/asynclog`` and ``.venv/bin/python`` are this interpreter on this checkout (also first on PATH, so a page
may say plain ``asynclog``). Each page then gets a copy of that folder and runs its blocks in order: a ```bash or
```sh block line by line in one ``bash -euo pipefail`` (naming the line that failed), a ```python block as a
script. A block preceded by ``<!-- not run: why -->`` is skipped; the reason is required.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
from typing import NamedTuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PAGES = [README, *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
SHELL, PYTHON = ("bash", "sh"), ("python",)
_FENCE = re.compile(r"^```([\w+-]*)\s*$")
_NOT_RUN = re.compile(r"^<!--\s*not run:(.*?)-->\s*$")
_MARK = "@@doc-line "
# What a page may name by a relative path besides its own outputs: the checkout's folders, read-only in spirit.
_CHECKOUT_FOLDERS = ("configs", "benchmarks")


class Block(NamedTuple):
    lang: str
    body: str
    line: int  # where its fence opens, 1-based
    not_run: str | None  # the reason given, when the page says not to run it


def blocks(path: str) -> list[Block]:
    """Every fenced block of a page with its language and the not-run reason written just above it."""
    found, lines = [], open(path, encoding="utf-8").read().splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
        note = _NOT_RUN.match(lines[i - 1]) if i else None
        found.append(Block(fence.group(1), "\n".join(lines[i + 1:end]), i + 1, note.group(1).strip() if note else None))
        i = end + 1
    return found


def runnable(path: str) -> list[Block]:
    """The blocks this test runs for a page (for the README, all but the first shell block)."""
    every = blocks(path)
    if path == README:
        every.remove(next(b for b in every if b.lang in SHELL))
    return [b for b in every if b.lang in SHELL + PYTHON and b.not_run is None]


def command_lines(body: str) -> list[str]:
    """A shell block's command lines (blank lines and whole-line comments dropped)."""
    return [line for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def demo_part(first_line: str) -> str:
    """``.venv/bin/asynclog demo ...`` from the README's first line, made tiny."""
    command = first_line.split("#")[0].split("&&")[-1].strip()
    assert command.startswith(".venv/bin/asynclog demo"), f"the README's first command changed: {first_line}"
    return command + " --size tiny"


def tool(folder, name: str, command: str) -> None:
    path = os.path.join(folder, ".venv", "bin", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f'#!/bin/sh\nexec {command} "$@"\n')
    os.chmod(path, 0o755)


def environment(folder) -> dict:
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                PATH=os.path.join(folder, ".venv", "bin") + os.pathsep + os.environ["PATH"])


@pytest.fixture(scope="module")
def after_first_command(tmp_path_factory):
    """A folder as the README's first command leaves it: a venv's tools and the demo's logs."""
    folder = tmp_path_factory.mktemp("after-first-command")
    python = shlex.quote(sys.executable)
    tool(folder, "python", python)
    tool(folder, "asynclog", f"{python} -m asynclog")
    for name in _CHECKOUT_FOLDERS:
        os.symlink(os.path.join(ROOT, name), os.path.join(folder, name))
    first = command_lines(next(b for b in blocks(README) if b.lang in SHELL).body)[0]
    demo = subprocess.run(["bash", "-euo", "pipefail", "-c", demo_part(first)], cwd=folder, env=environment(folder),
                          capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, f"the README's first command failed:\n{demo.stderr}"
    return folder


def run_shell(block: Block, folder) -> subprocess.CompletedProcess:
    script = "".join(f"echo {shlex.quote(_MARK + line)} >&2\n{line}\n" for line in command_lines(block.body))
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=folder, env=environment(folder),
                          capture_output=True, text=True, timeout=300)


def run_python(block: Block, folder) -> subprocess.CompletedProcess:
    path = os.path.join(folder, f"block-{block.line}.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(block.body + "\n")
    return subprocess.run([sys.executable, path], cwd=folder, env=environment(folder), capture_output=True,
                          text=True, timeout=300)


def failed_line(stderr: str) -> str:
    marks = [line[len(_MARK):] for line in stderr.splitlines() if line.startswith(_MARK)]
    return marks[-1] if marks else "(before the first line)"


def page_id(path: str) -> str:
    return os.path.relpath(path, ROOT)


def test_the_readme_shows_shell_commands_after_its_first_block():
    assert runnable(README), "the README shows no commands after its set-up block"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_block_of_the_page_runs_as_written(page, after_first_command, tmp_path):
    chosen = runnable(page)
    if not chosen:
        pytest.skip(f"{page_id(page)} has no block to run")
    if shutil.which("jq") is None and any(" jq " in b.body for b in chosen if b.lang in SHELL):
        pytest.skip(f"{page_id(page)} pipes into jq, which is not installed")
    folder = tmp_path / "work"
    shutil.copytree(after_first_command, folder, symlinks=True)
    for block in chosen:
        done = run_shell(block, folder) if block.lang in SHELL else run_python(block, folder)
        where = failed_line(done.stderr) if block.lang in SHELL else "the block"
        assert done.returncode == 0, (f"{page_id(page)}:{block.line}: {where} failed (exit {done.returncode})\n"
                                      f"{done.stderr[-2000:]}")


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_a_block_left_unrun_says_why(page):
    for block in blocks(page):
        assert block.not_run != "", f"{page_id(page)}:{block.line}: '<!-- not run: -->' needs a reason"


def test_a_block_marked_not_run_is_left_out_and_other_languages_are_not_run(tmp_path):
    page = tmp_path / "PAGE.md"
    page.write_text("```bash\necho runs\n```\n<!-- not run: needs a cluster -->\n```bash\nsrun x\n```\n"
                    "```yaml\nkey: 1\n```\n```python\nprint(1)\n```\n")
    assert [(b.lang, b.not_run) for b in blocks(str(page))] == [
        ("bash", None), ("bash", "needs a cluster"), ("yaml", None), ("python", None)]
    assert [b.body for b in runnable(str(page))] == ["echo runs", "print(1)"]
