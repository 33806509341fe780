"""Packaging: the wheel a user installs carries the level configs and declares the Pythons the suite proves."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = ("minimal", "standard", "detailed", "debug")
TESTED = ("3.10", "3.11", "3.12", "3.13")  # scripts/test-matrix.sh runs the suite on each
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", "logs",
                                    ".pytest_cache", ".hypothesis", "benchmarks")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    """A wheel built from a copy of the checkout (a build writes build/ and egg-info beside the sources)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=NOT_SOURCE)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(work / "dist"), str(source)], check=True, timeout=120, capture_output=True)
    (path,) = (work / "dist").glob("asynclog-*.whl")
    return str(path)


def test_the_wheel_ships_the_level_configs_and_they_load_by_name(wheel, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"asynclog/configs/{level}.yaml" for level in LEVELS} <= set(names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), wheel],
                   check=True, timeout=120, capture_output=True)
    code = ("import json, asynclog; from asynclog import Config, DetailedLogger; "
            "print(json.dumps([asynclog.__file__] + [[Config.for_level(l).level, DetailedLogger(l).level] "
            f"for l in {LEVELS!r}]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    where, *levels = json.loads(done.stdout)
    assert where.startswith(str(target))
    assert levels == [[level, level] for level in LEVELS]


def test_the_wheel_ships_the_reports_styles_and_script(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"asynclog/tools/report.css", "asynclog/tools/report.js"} <= names  # read by asynclog.tools.report into every page


def test_the_wheel_declares_the_tested_pythons(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        lines = archive.read(metadata).decode().splitlines()
    assert "Requires-Python: >=3.10" in lines
    for version in TESTED:
        assert f"Classifier: Programming Language :: Python :: {version}" in lines
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in TESTED


def _setup(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", "setup.sh"), *args], capture_output=True, text=True,
                          timeout=60)


def test_setup_documents_its_extras_flag():
    done = _setup("--help")
    assert done.returncode == 0
    assert "--extras bench" in done.stdout and ".[test,bench]" in done.stdout
    assert "bench" in done.stdout.splitlines()[-1].split(": ")[1].split(",")


def test_setup_refuses_an_unknown_extra_before_installing_anything():
    done = _setup("--extras", "bench,benhc")
    assert done.returncode == 2
    assert "'benhc'" in done.stderr and "bench" in done.stderr


def test_every_error_class_lives_in_errors_and_in_the_public_surface():
    import inspect

    import asynclog
    from asynclog import errors

    defined = {name for name, value in vars(errors).items()
               if inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == errors.__name__}
    assert defined == set(errors.__all__)
    assert set(errors.__all__) <= set(asynclog.__all__)
    assert all(getattr(asynclog, name) is getattr(errors, name) for name in errors.__all__)
