"""The fuzz targets (tests/fuzz) in short: each runs over its seed corpus, cut from real runs, then mutates for a
second under atheris; any exception the readers do not document, a hang or a blown memory bound fails.

``--full`` mutates for a minute a target; ``scripts/fuzz.sh`` runs them for as long as asked. Skipped where
atheris is not installed (``pip install 'asynclog[fuzz]'``).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("atheris", reason="the fuzz targets need atheris: pip install 'asynclog[fuzz]'")

FUZZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz")


def target_names() -> list[str]:
    """The targets of tests/fuzz/targets.py, read without importing it (the fuzzing process does)."""
    with open(os.path.join(FUZZ, "targets.py")) as f:
        tree = ast.parse(f.read())
    return [node.name.removeprefix("target_") for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("target_")]


SHORT_S, FULL_S = 1, 60


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """Real runs and the corpora cut from them (tests/fuzz/seeds.py), made once for every target."""
    out = tmp_path_factory.mktemp("fuzz-seeds")
    subprocess.run([sys.executable, os.path.join(FUZZ, "seeds.py"), str(out)], check=True, timeout=300)
    return out


@pytest.mark.parametrize("target", target_names())
def test_fuzz_target_holds_over_its_seeds_and_mutations(seeds, target, tmp_path, full):
    corpus, findings = tmp_path / "corpus", tmp_path / "findings"
    shutil.copytree(seeds / "corpus" / target, corpus)  # libFuzzer adds what it finds to the corpus it is given
    findings.mkdir()
    seconds = FULL_S if full else SHORT_S
    done = subprocess.run([sys.executable, os.path.join(FUZZ, "run.py"), target, f"-max_total_time={seconds}",
                           "-print_final_stats=1", f"-artifact_prefix={findings}/", str(corpus)],
                          env=dict(os.environ, FUZZ_SEEDS=str(seeds), FUZZ_SCRATCH=str(tmp_path)),
                          capture_output=True, text=True,
                          timeout=seconds + 240)
    found = [name for name in os.listdir(findings) if not name.startswith("slow-unit-")]  # slow: a busy machine
    assert done.returncode == 0 and not found, done.stderr[-4000:]
    seeded = len(os.listdir(seeds / "corpus" / target))
    executed = int(done.stderr.rpartition("stat::number_of_executed_units:")[2].split()[0])
    assert executed > seeded, f"only {executed} inputs ran for {seeded} seeds"


@pytest.mark.parametrize("argument", ["--help", "-h", "abc", "0", "-5"])
def test_fuzz_script_refuses_what_is_not_a_number_of_seconds_before_it_fuzzes(argument):
    script = os.path.join(os.path.dirname(FUZZ), "..", "scripts", "fuzz.sh")
    done = subprocess.run(["bash", script, argument], capture_output=True, text=True, timeout=60)
    assert done.returncode == (0 if argument.startswith("-h") or argument == "--help" else 2), done.stderr
    assert "usage: bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]" in done.stdout + done.stderr
