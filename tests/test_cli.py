"""The console script as a user meets it: one clear line and a documented exit code for each mistake,
``--debug`` for the traceback, ``--version``, help for every argument, and commands that plug in."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import asynclog
from asynclog import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def asynclog_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "asynclog", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def one_clear_line(done: subprocess.CompletedProcess, *words: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_cat_of_a_missing_file_says_so_in_one_line_and_exits_not_found(tmp_path):
    done = asynclog_cli("cat", tmp_path / "nosuch.alog")
    one_clear_line(done, "nosuch.alog", "no such file")
    assert done.returncode == cli.NOT_FOUND


def test_verify_of_a_missing_file_exits_not_found(tmp_path):
    done = asynclog_cli("verify", tmp_path / "nosuch.alog")
    one_clear_line(done, "nosuch.alog")
    assert done.returncode == cli.NOT_FOUND


def test_cat_of_a_directory_asks_for_a_log_file(tmp_path):
    done = asynclog_cli("cat", tmp_path)
    one_clear_line(done, str(tmp_path), "folder")
    assert done.returncode == cli.USAGE


def test_demo_out_a_file_is_a_usage_error_naming_it(tmp_path):
    (tmp_path / "afile").write_text("")
    done = asynclog_cli("demo", "--size", "tiny", "--out", tmp_path / "afile")
    one_clear_line(done, "afile", "--out")
    assert done.returncode == cli.USAGE


def test_demo_with_a_misspelt_yaml_key_names_the_key_in_one_line(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("detailed_logging:\n  levl: debug\n")
    done = asynclog_cli("demo", "--size", "tiny", "--config", config, "--out", tmp_path / "logs")
    one_clear_line(done, "levl")
    assert done.returncode == cli.USAGE


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_demo_into_a_read_only_folder_is_one_line_and_cannot_access(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    done = asynclog_cli("demo", "--size", "tiny", "--out", out)
    one_clear_line(done, "ro")
    assert done.returncode == cli.CANNOT_ACCESS


@pytest.mark.skipif(not os.path.isdir("/sys"), reason="needs /sys, where even root cannot make a folder")
def test_an_unwritable_path_is_one_line_and_cannot_access():
    done = asynclog_cli("demo", "--size", "tiny", "--out", "/sys/asynclog-test/logs")
    one_clear_line(done, "/sys/asynclog-test")
    assert done.returncode == cli.CANNOT_ACCESS


def test_debug_shows_the_traceback(tmp_path):
    done = asynclog_cli("--debug", "cat", tmp_path / "nosuch.alog")
    assert "Traceback" in done.stderr and done.returncode == cli.NOT_FOUND
    done = asynclog_cli("cat", tmp_path / "nosuch.alog", "--debug")
    assert "Traceback" in done.stderr and done.returncode == cli.NOT_FOUND


def test_a_usage_mistake_exits_usage_not_verify_incomplete():
    done = asynclog_cli("verify")
    assert done.returncode == cli.USAGE and done.returncode != cli.INCOMPLETE


def test_version_prints_the_package_version():
    done = asynclog_cli("--version")
    assert done.returncode == 0 and asynclog.__version__ in done.stdout


def parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                yield from parsers(child)


def test_every_argument_has_help_and_no_markup():
    for parser in parsers(cli.build_parser()):
        for action in parser._actions:
            assert action.help, f"{parser.prog}: {action.option_strings or action.dest} has no help"
        assert "``" not in parser.format_help(), parser.prog


def test_help_lists_the_exit_codes():
    text = cli.build_parser().format_help()
    for code in (cli.OK, cli.DAMAGED, cli.INCOMPLETE, cli.USAGE, cli.NOT_FOUND, cli.CANNOT_ACCESS):
        assert f"{code} " in text


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A command module on sys.path, listed in COMMAND_MODULES; write its body with the returned function."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, body: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, name))
        return name

    return write


def test_a_listed_module_adds_its_command(plugin, capsys):
    plugin("asynclog_test_hello", """
        def register(subparsers):
            p = subparsers.add_parser("hello", help="say hello")
            p.add_argument("who", help="whom to greet")
            p.set_defaults(func=lambda args: print("hello", args.who) or 0)
    """)
    assert cli.main(["hello", "world"]) == 0
    assert capsys.readouterr().out == "hello world\n"


def test_a_listed_module_that_is_not_installed_is_skipped(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("asynclog_test_not_there",))
    assert "cat" in cli.build_parser().format_help()


def test_an_import_error_inside_a_listed_module_is_raised(plugin):
    plugin("asynclog_test_broken", "import asynclog_test_missing_dependency\n")
    with pytest.raises(ModuleNotFoundError, match="asynclog_test_missing_dependency"):
        cli.build_parser()


def log_with_nan(logdir) -> str:
    with asynclog.start(logdir, name="nan") as run:
        run.event("values", nan=float("nan"), inf=float("inf"), ninf=float("-inf"), none=None, nested=[float("nan")])
    return run.path


def test_cat_keeps_nan_and_infinities_apart_from_none(logdir):
    done = asynclog_cli("cat", log_with_nan(logdir))
    assert done.returncode == 0, done.stderr
    [data] = [line["data"] for line in map(json.loads, done.stdout.splitlines()) if line.get("name") == "values"]
    assert data == {"nan": "NaN", "inf": "Infinity", "ninf": "-Infinity", "none": None, "nested": ["NaN"]}


def log_with_rows(logdir) -> str:
    import torch

    with asynclog.start(logdir, name="rows") as run:
        stream = run.stream("sequences/E_batch", chunk_rows=2)  # several chunks
        for i in range(5):
            stream.append(sequence_id=i, text=f"row {i}", score=float("nan") if i == 1 else i / 2,
                          tokens=torch.arange(i, dtype=torch.int32))
    return run.path


def test_cat_rows_prints_a_streams_rows_as_json_lines_in_order(logdir):
    done = asynclog_cli("cat", log_with_rows(logdir), "--rows", "sequences/E_batch")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert rows == [{"sequence_id": i, "text": f"row {i}", "score": "NaN" if i == 1 else i / 2,
                     "tokens": list(range(i))} for i in range(5)]


def test_cat_rows_into_head_and_jq_gives_the_first_three_rows_as_one_array(logdir):
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    line = (f"{sys.executable} -m asynclog cat {log_with_rows(logdir)} --rows sequences/E_batch "
            "| head -n 3 | jq -c -s .")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", line], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert [row["sequence_id"] for row in json.loads(done.stdout)] == [0, 1, 2]


def test_cat_rows_of_a_stream_not_there_names_the_streams_there_are(logdir):
    done = asynclog_cli("cat", log_with_rows(logdir), "--rows", "sequences/U_batch")
    one_clear_line(done, "sequences/U_batch", "sequences/E_batch")
    assert done.returncode == cli.USAGE


def test_cat_rows_skips_a_damaged_chunk_names_it_and_exits_damaged(logdir, tmp_path):
    from asynclog import _format as fmt

    path = log_with_rows(logdir)
    with open(path, "rb") as f:
        second = [h for h in fmt.scan_frames(f) if h.kind == fmt.FrameKind.CHUNK][1]
    data = bytearray(open(path, "rb").read())
    data[second.end - 3] ^= 0xFF
    bad = tmp_path / "bad.alog"
    bad.write_bytes(bytes(data))
    done = asynclog_cli("cat", bad, "--rows", "sequences/E_batch")
    assert done.returncode == cli.DAMAGED
    one_clear_line(done, "chunk 1", "sequences/E_batch")
    assert [json.loads(line)["sequence_id"] for line in done.stdout.splitlines()] == [0, 1, 4]


def test_cat_shows_the_token_texts_a_token_chunk_reads_from_the_vocab_table(texts_log):
    done = asynclog_cli("cat", texts_log)
    assert done.returncode == 0, done.stderr
    chunks = [line for line in map(json.loads, done.stdout.splitlines()) if line["type"] == "chunk"]
    tokens = [c for c in chunks if c["stream"] == "tokens/U_batch"]
    assert [c["rows"] for c in tokens] == [64, 16]
    lookup = {"column": "token_texts", "keys": "tokens", "table": "vocab", "key": "token_id", "value": "text"}
    assert all(c["lookups"] == [lookup] for c in tokens)
    assert [[c["name"] for c in chunk["columns"]] for chunk in chunks if chunk["stream"] == "vocab"] == [
        ["token_id", "text"]]


# What each command is given to fail on: a path that does not exist, then an empty folder, in place of PATH
# (bench is given one where a workload's name belongs). Every registered command is here.
MISTAKES = {
    "verify": ["PATH"], "cat": ["PATH"], "demo": ["--config", "PATH", "--out", "OUT"], "bench": ["--only", "PATH"],
    "ls": ["PATH"], "show": ["PATH"], "sweep": ["PATH"], "export": ["PATH", "--to", "csv", "-o", "OUT"],
    "query": ["PATH", "SELECT 1"], "plot": ["PATH", "-o", "OUT"], "import": ["PATH", "--out", "OUT"],
    "diff": ["PATH", "PATH"], "report": ["PATH", "-o", "OUT"],
}


def _documented_statuses(parser: argparse.ArgumentParser, summary: str) -> set[int]:
    """The exit statuses a command's help names: the numbers in each sentence from an "exit" to its full stop."""
    import re

    text = " ".join(filter(None, (summary, parser.description)))
    sentences = [m.group(0) for m in re.finditer(r"\b[Ee]xit\b.*?(?:\.\s|\.?\Z)", text, re.S)]
    return {int(n) for sentence in sentences for n in re.findall(r"(?<![\w.])(\d{1,3})(?![\w.])", sentence)}


def test_every_command_documents_the_exit_statuses_it_returns(tmp_path, capsys):
    subparsers = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help for choice in subparsers._choices_actions}
    assert set(subparsers.choices) == set(MISTAKES), "add the new command to MISTAKES"
    (tmp_path / "empty").mkdir()
    wrong = {}
    for name, args in MISTAKES.items():
        documented = _documented_statuses(subparsers.choices[name], summaries[name])
        if not documented or not documented <= set(cli.EXIT_STATUSES):
            wrong[name] = ("documents", sorted(documented))
        for path in (tmp_path / "missing", tmp_path / "empty"):
            argv = [name, *(str(path) if a == "PATH" else str(tmp_path / "out") if a == "OUT" else a for a in args)]
            status = cli.main(argv)
            capsys.readouterr()
            if status not in documented:
                wrong[" ".join(argv[:1] + [path.name])] = (status, sorted(documented))
    assert wrong == {}, "\n".join(f"{k}: {v}" for k, v in wrong.items())


def deep_log(directory, depth: int = 600) -> str:
    """A real log whose first event holds a value nested ``depth`` lists deep (which the reader decodes, and a
    walk of two Python frames a level does not), then a flat one."""
    value = 0
    for _ in range(depth):
        value = [value]
    with asynclog.start(directory, name="deep") as run:
        run.event("deep", value=value)
        run.event("flat", x=1)
    return run.path


def test_cat_skips_a_record_too_deep_for_json_in_one_line_and_prints_the_rest(tmp_path):
    """Found writing the fuzz targets (tests/fuzz): json_safe recursed until RecursionError."""
    done = asynclog_cli("cat", deep_log(tmp_path))
    assert done.returncode == cli.DAMAGED and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "nests too deeply" in done.stderr
    assert [json.loads(line)["type"] for line in done.stdout.splitlines()] == ["header", "footer"]
