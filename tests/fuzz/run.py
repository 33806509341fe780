"""Run one fuzz target under atheris (libFuzzer): ``python tests/fuzz/run.py TARGET [libFuzzer options] [CORPUS ...]``.

asynclog's reading modules are instrumented for coverage as they are imported (torch, numpy and msgspec are not;
PyYAML's pure-Python loader is; the probe's side, never imported, is not), then libFuzzer drives
``targets.TARGETS[TARGET]``. ``FUZZ_SEEDS`` names the folder ``seeds.py`` made.
Bounds a target must keep are libFuzzer's options, given here unless the command line gives them:
``-rss_limit_mb`` (memory: a reader that allocates what a crafted file declares ends there) and ``-timeout``
(seconds one input may take: a hang ends there). A finding is written as ``crash-*``, ``timeout-*`` or
``oom-*`` beside ``-artifact_prefix``, and the run exits non-zero.
"""

from __future__ import annotations

import functools
import importlib
import sys

BOUNDS = {"-rss_limit_mb": "3072", "-timeout": "20"}


def main(argv: list[str]) -> None:
    try:
        import atheris
    except ImportError:
        sys.exit("fuzz: atheris is not installed: pip install 'asynclog[fuzz]'")
    if len(argv) < 2 or argv[1].startswith("-"):
        sys.exit("usage: python tests/fuzz/run.py TARGET [libFuzzer options] [CORPUS ...]")
    with atheris.instrument_imports(include=["asynclog", "yaml"]):
        importlib.import_module("yaml")  # config's loader is PyYAML's: its branches guide the config target
        from asynclog import cli

        for module in cli.COMMAND_MODULES:  # the console script imports its commands lazily
            importlib.import_module(module)
        import targets  # and with it every reader it drives
    importlib.import_module("torch")  # what the reader imports at its first tensor: not in the first input's time

    # The console script's parser, built once: argparse's setup is otherwise most of the time an input takes.
    cli.build_parser = functools.cache(cli.build_parser)
    name, options = argv[1], argv[2:]
    if name not in targets.TARGETS:
        sys.exit(f"fuzz: no target {name!r}; there are: {', '.join(targets.TARGETS)}")
    given = {option.split("=")[0] for option in options}
    options += [f"{key}={value}" for key, value in BOUNDS.items() if key not in given]
    atheris.Setup([argv[0], *options], targets.TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
