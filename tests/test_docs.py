"""The docs say what the code does: links resolve, and the reference pages match the code they describe.

CONFIG.md against ``Config`` and ``DetailedLoggingConfig`` (keys and defaults), CLI.md against the real parser
and ``asynclog/cli/exits.py``, API.md against ``asynclog.__all__``, and every test a page names (``file::name``)
against the test files. A new key, command, option, exit code or public name without its line fails here.
"""

from __future__ import annotations

import argparse
import ast
import glob
import os
import re

import msgspec
import pytest

import asynclog
from asynclog.cli import build_parser
from asynclog.config import Config, DetailedLoggingConfig
from asynclog.cli.exits import EXIT_STATUSES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
PAGES = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(DOCS, "*.md")))]
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def prose(text: str) -> str:
    """The page without its fenced blocks and code spans, where a link is not a link."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: str) -> set[str]:
    seen: dict[str, int] = {}
    for line in re.sub(r"^```.*?^```", "", read(path), flags=re.S | re.M).splitlines():
        heading = _HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
    return {base if i == 0 else f"{base}-{i}" for base, count in seen.items() for i in range(count)}


def sections(path: str, level: str) -> dict[str, str]:
    """Heading text -> the text under it, for the headings of one level (``"###"``)."""
    found, current = {}, None
    for line in read(path).splitlines():
        heading = _HEADING.match(line)
        if heading and len(heading.group(1)) <= len(level):
            current = heading.group(2) if heading.group(1) == level else None
            if current is not None:
                found[current] = ""
        elif current is not None:
            found[current] += line + "\n"
    return found


def table(text: str, after: str) -> dict[str, str]:
    """The first column's code span -> the second column's, for the table following the heading ``after``."""
    rows, inside = {}, False
    for line in text.splitlines():
        if line.startswith("#"):
            inside = line.lstrip("# ").startswith(after)
        elif inside and line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = cells[1].strip("`")
    return rows


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_names_a_file_and_heading_that_exist(page):
    broken = []
    for target in _LINK.findall(prose(read(page))):
        if re.match(r"[a-z][a-z+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        where = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(where):
            broken.append(f"{target}: no such file")
        elif anchor and where.endswith(".md") and anchor not in anchors(where):
            broken.append(f"{target}: no heading #{anchor} in {os.path.relpath(where, ROOT)}")
    assert not broken, f"{os.path.relpath(page, ROOT)}: " + "; ".join(broken)


def test_link_checking_finds_a_missing_file_and_a_missing_heading(tmp_path):
    page = tmp_path / "PAGE.md"
    page.write_text("# Top\n\n[ok](#top) [gone](NOPE.md) [bad](#nowhere) `[code](NOPE.md)`\n")
    with pytest.raises(AssertionError, match=r"NOPE.md: no such file; #nowhere: no heading #nowhere"):
        test_every_relative_link_names_a_file_and_heading_that_exist(str(page))


def test_github_anchors_drop_punctuation_and_number_repeats(tmp_path):
    page = tmp_path / "PAGE.md"
    page.write_text("# `flush()` means written\n## Stream rows (issue 10): met\n## A\n## A\n")
    assert anchors(str(page)) == {"flush-means-written", "stream-rows-issue-10-met", "a", "a-1"}


def named_tests(page: str) -> list[tuple[str, str]]:
    return re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", read(page))


def test_every_test_the_docs_name_exists():
    assert len(named_tests(os.path.join(DOCS, "GUARANTEES.md"))) >= 15, "the pattern file::name may have changed"
    missing = []
    for path, name in {named for page in PAGES for named in named_tests(page)}:
        full = os.path.join(ROOT, path)
        defined = os.path.exists(full) and {node.name for node in ast.walk(ast.parse(read(full)))
                                            if isinstance(node, ast.FunctionDef)}
        if not defined or name not in defined:
            missing.append(f"{path}::{name}")
    assert not missing, f"the docs name tests that do not exist: {sorted(missing)}"


def test_every_guarantee_names_a_test():
    text = read(os.path.join(DOCS, "GUARANTEES.md"))
    for heading, body in sections(os.path.join(DOCS, "GUARANTEES.md"), "##").items():
        if heading != "Limits, honestly":
            assert "::" in body, f"GUARANTEES.md: '{heading}' names no test"
    assert "Limits, honestly" in text


@pytest.mark.parametrize("struct, heading", [(Config, "`asynclog` section"),
                                             (DetailedLoggingConfig, "`detailed_logging` section")])
def test_config_md_lists_every_key_with_its_default(struct, heading):
    documented = table(read(os.path.join(DOCS, "CONFIG.md")), heading)
    fields = msgspec.structs.fields(struct)
    assert set(documented) == {f.name for f in fields}, f"CONFIG.md '{heading}' keys differ from {struct.__name__}"
    for field in fields:
        assert eval(documented[field.name], {}) == field.default, (
            f"CONFIG.md: {field.name} defaults to {field.default!r}, not {documented[field.name]}")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def cli_sections() -> dict[str, str]:
    """Command name -> its section of CLI.md (headings ``### `asynclog NAME ...` ``)."""
    found = {}
    for heading, body in sections(os.path.join(DOCS, "CLI.md"), "###").items():
        command = re.match(r"`asynclog (\w+)", heading)
        assert command, f"CLI.md: a command heading must start with `asynclog NAME, not {heading!r}"
        found[command.group(1)] = body
    return found


def test_cli_md_has_a_section_for_every_command_and_no_other():
    assert set(cli_sections()) == set(subcommands())


def test_cli_md_names_every_option_of_every_command():
    documented = cli_sections()
    for name, parser in subcommands().items():
        options = {o for a in parser._actions for o in a.option_strings if o.startswith("--")}
        missing = sorted(o for o in options - {"--help", "--debug"} if f"`{o}" not in documented[name])
        assert not missing, f"CLI.md: asynclog {name} does not describe {missing}"


def test_cli_md_gives_each_command_exit_codes_that_exist():
    for name, body in cli_sections().items():
        line = re.search(r"^Exit codes:(.*?)(?:\n\n|\Z)", body, re.S | re.M)
        assert line, f"CLI.md: asynclog {name} says nothing of its exit codes"
        codes = {int(code) for code in re.findall(r"`(\d+)`", line.group(1))}
        assert 0 in codes and codes <= set(EXIT_STATUSES), f"CLI.md: asynclog {name} exit codes {sorted(codes)}"


def test_cli_md_exit_code_table_is_exits_py():
    rows = re.findall(r"^\| (\d+) \| (.*?) \|$", read(os.path.join(DOCS, "CLI.md")), re.M)
    assert {int(code): meaning for code, meaning in rows} == EXIT_STATUSES


def test_api_md_documents_every_public_name():
    headings = {h.strip("`") for h in sections(os.path.join(DOCS, "API.md"), "###")}
    missing = sorted(set(asynclog.__all__) - headings)
    assert not missing, f"API.md has no section for {missing}"
    assert not headings - set(asynclog.__all__), f"API.md documents names asynclog does not export: " \
                                                  f"{sorted(headings - set(asynclog.__all__))}"
