"""Config: defaults, YAML loading, and errors that name the key and the file."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import asynclog
from asynclog import Config


def test_yaml_section_loads_and_overrides_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("asynclog:\n  level: debug\n  zstd_level: 1\n  policy: drop\n")
    config = Config.from_yaml(path)
    assert (config.level, config.zstd_level, config.policy, config.queue_batches) == ("debug", 1, "drop", 64)


@pytest.mark.parametrize("text, words", [
    ("asynclog:\n  levle: debug\n", ["levle", "c.yaml"]),
    ("asynclog:\n  zstd_level: fast\n", ["zstd_level", "c.yaml", "int"]),
    ("asynclog:\n  level: verbose\n", ["level", "c.yaml"]),
    ("asynclog:\n  staging_bytes: 10\n", ["staging_bytes", "c.yaml"]),
    ("- just\n- a list\n", ["c.yaml", "mapping"]),
])
def test_bad_config_names_the_key_and_the_file(tmp_path, text, words):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(asynclog.ConfigError) as info:
        Config.from_yaml(path)
    for word in words:
        assert word in str(info.value)


def test_start_rejects_a_bad_level_before_starting_anything(tmp_path):
    with pytest.raises(asynclog.ConfigError, match="level"):
        asynclog.start(tmp_path, level="loud")
    assert not list(tmp_path.iterdir())


# --- one config file means one thing wherever it is passed --------------------------------------------------

SECTIONED = "detailed_logging:\n  enabled: true\n  level: debug\nasynclog:\n  zstd_level: 5\n"
PROBE_ONLY = "detailed_logging:\n  enabled: true\n  level: detailed\n"
FLAT = "level: minimal\nzstd_level: 7\n"


def _everywhere(path, tmp_path):
    """(level, zstd_level) as Config.from_yaml, start(config=path) and DetailedLogger(config=path) see them."""
    from asynclog.probe.logger import DetailedLogger

    config = Config.from_yaml(path)
    with asynclog.start(tmp_path / "logs", name="seen", config=str(path)) as run:
        started = run.config
    engine = DetailedLogger(str(path)).engine_config
    return [(c.level, c.zstd_level) for c in (config, started, engine)]


@pytest.mark.parametrize("text, expected", [
    (SECTIONED, ("debug", 5)),
    (PROBE_ONLY, ("detailed", 3)),
    (FLAT, ("minimal", 7)),
    ("asynclog:\n  level: detailed\n", ("detailed", 3)),
])
def test_a_config_file_gives_the_same_level_and_settings_everywhere(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert _everywhere(path, tmp_path) == [expected] * 3


@pytest.mark.parametrize("text, words", [
    ("detailed_loging:\n  level: debug\n", ["detailed_loging", "did you mean 'detailed_logging'"]),
    ("asynclg:\n  level: debug\n", ["asynclg", "did you mean 'asynclog'"]),
    ("asynclog:\n  levle: debug\n", ["levle", "did you mean 'level'"]),
    ("detailed_logging:\n  levle: debug\n", ["levle", "did you mean 'level'"]),
    ("levle: debug\n", ["levle", "did you mean 'level'"]),
    ("compresion: raw\n", ["compresion", "did you mean 'compression'"]),
    ("asynclog:\n  level: verbose\n", ["verbose", "minimal, standard, detailed, debug"]),
    ("detailed_logging:\n  level: verbose\n", ["verbose", "minimal, standard, detailed, debug"]),
    ("asynclog:\n  policy: wait\n", ["wait", "block, drop, error"]),
    ("detailed_logging:\n  level: debug\nasynclog:\n  level: minimal\n", ["debug", "minimal", "level"]),
    ("asynclog:\n  policy: drop\nlevel: debug\n", ["level", "asynclog"]),
])
def test_a_misspelt_section_or_key_is_an_error_with_a_suggestion(tmp_path, text, words):
    from asynclog.probe.logger import DetailedLogger

    path = tmp_path / "c.yaml"
    path.write_text(text)
    for load in (Config.from_yaml, lambda p: asynclog.start(tmp_path / "logs", config=p), DetailedLogger):
        with pytest.raises(asynclog.ConfigError) as info:
            load(str(path))
        for word in words + [str(path)]:
            assert word in str(info.value)
    assert not (tmp_path / "logs").exists()


def test_a_probe_config_keeps_its_own_keys_beside_the_sections(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 0.1\nbatch_config: {B_E: 4}\n" + SECTIONED)
    assert Config.from_yaml(path).level == "debug"


@pytest.mark.parametrize("level", asynclog.LEVELS)
def test_level_configs_load_by_name(level, tmp_path):
    from asynclog.probe.logger import DetailedLogger

    assert Config.for_level(level).level == level
    assert Config.from_yaml(level).level == level
    assert DetailedLogger(level).level == level
    with asynclog.start(tmp_path, name="named", config=level) as run:
        assert run.config.level == level


def test_an_unknown_level_name_lists_the_levels():
    with pytest.raises(asynclog.ConfigError, match="minimal, standard, detailed, debug"):
        Config.for_level("verbose")


def test_the_repo_configs_are_the_shipped_level_configs():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for level in asynclog.LEVELS:
        with open(os.path.join(root, "configs", f"{level}.yaml"), "rb") as mine:
            with open(os.path.join(root, "asynclog", "configs", f"{level}.yaml"), "rb") as shipped:
                assert mine.read() == shipped.read()


def test_demo_config_errors_name_the_file(tmp_path):
    path = tmp_path / "probe.yaml"
    path.write_text("detailed_logging:\n  level: loud\n")
    done = subprocess.run([sys.executable, "-m", "asynclog", "demo", "--size", "tiny", "--config", str(path),
                           "--out", str(tmp_path / "logs")], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert str(path) in done.stderr and "<config>" not in done.stderr and "loud" in done.stderr


def test_writer_nice_is_checked_and_reaches_the_writer(tmp_path):
    import psutil

    with pytest.raises(asynclog.ConfigError, match="writer_nice"):
        asynclog.Config(writer_nice=20)
    with asynclog.start(tmp_path, name="nice", config={"writer_nice": 7}) as run:
        run.flush()  # start() does not wait for the writer; a flush does, so it has set its priority by now
        writer = psutil.Process(run._channel.process.pid)
        assert writer.nice() == psutil.Process().nice() + 7


# --- hostile config files: every one is a ConfigError naming the file, found before anything grows -----------
# Each runs in a child under a memory limit and a timeout: those detect a blow-up or a hang, the test asserts
# only what the child printed and how it exited.
LIMITED = """
import resource, sys
import asynclog.cli, asynclog.probe.logger  # imported before the limit, which then bounds what the config costs
room = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize() + (1 << 30)
resource.setrlimit(resource.RLIMIT_AS, (room, room))
"""
OPEN_A_RUN = LIMITED + """
try:
    asynclog.DetailedLogger(sys.argv[1]).log_run_start("/checkpoints/step_1")
except asynclog.ConfigError as exc:
    print(f"ConfigError: {exc}", file=sys.stderr)
    sys.exit(3)
"""
RUN_THE_CLI = LIMITED + "sys.exit(asynclog.cli.main(sys.argv[1:]))\n"


def _laughs() -> str:
    """The billion laughs: nine levels of nine aliases each, 9**9 strings once expanded, under 500 bytes."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{name}: &{name} [{','.join(['*' + before] * 9)}]" for before, name in zip("abcdefgh", "bcdefghi")]
    return "\n".join(lines) + "\n"


HOSTILE = {
    "aliases": _laughs().encode(),
    "depth": b"x: " + b"[" * 20_000 + b"]" * 20_000 + b"\n",
    "not_utf8": b"detailed_logging:\n  run_name: \xff\xfe\xfd\n",
    "huge_width": b'detailed_logging:\n  filename_template: "{timestamp:>999999999}"\n',
}


def _hostile(tmp_path, kind: str):
    """The attack as a probe's config file that would otherwise log a run into tmp_path/logs."""
    settings = f"  enabled: true\n  output_directory: '{tmp_path / 'logs'}'\n".encode()
    body = HOSTILE[kind]
    if body.startswith(b"detailed_logging:\n"):  # the attack is in the section: the settings go beside it
        body = body.replace(b"detailed_logging:\n", b"detailed_logging:\n" + settings, 1)
    else:
        body = b"detailed_logging:\n" + settings + body
    path = tmp_path / f"{kind}.yaml"
    path.write_bytes(body)
    return path


def _one_config_line(done: subprocess.CompletedProcess, path) -> None:
    lines = done.stderr.strip().splitlines()
    assert (done.returncode, len(lines)) == (3, 1), done.stderr[-2000:]
    assert str(path) in lines[0] and "config" in lines[0], lines[0]


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_config_is_one_config_error_naming_the_file(tmp_path, kind):
    path = _hostile(tmp_path, kind)
    done = subprocess.run([sys.executable, "-c", OPEN_A_RUN, str(path)], capture_output=True, text=True,
                          timeout=120)
    _one_config_line(done, path)
    assert not list(tmp_path.glob("logs/*/*_config.yaml"))  # no sidecar of any size


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_the_cli_exits_3_with_one_line_for_a_hostile_config(tmp_path, kind):
    path = _hostile(tmp_path, kind)
    done = subprocess.run([sys.executable, "-c", RUN_THE_CLI, "demo", "--size", "tiny", "--config", str(path),
                           "--out", str(tmp_path / "logs")], capture_output=True, text=True, timeout=120)
    _one_config_line(done, path)


def test_a_config_may_use_anchors_merge_keys_and_format_widths(tmp_path):
    path = tmp_path / "probe.yaml"
    path.write_text("defaults: &defaults {enabled: true, level: minimal}\n"
                    "detailed_logging:\n  <<: *defaults\n  filename_template: '{checkpoint_name:.20}_{timestamp}'\n"
                    "sweeps: [*defaults, *defaults]\n")
    settings = asynclog.config.read_config(path)
    assert (settings.probe.enabled, settings.probe.level, settings.data["sweeps"][1]["level"]) == (True, "minimal",
                                                                                                    "minimal")


@pytest.mark.parametrize("char", ["\x00", "\x07", "\ufffe"])
def test_a_config_holding_a_character_yaml_forbids_is_a_config_error_naming_the_file(tmp_path, char):
    """Found by the fuzzer (tests/fuzz, target config): PyYAML checks the characters as its loader is made."""
    path = tmp_path / "probe.yaml"
    path.write_text(f"detailed_logging:\n  run_name: a{char}b\n", encoding="utf-8")
    with pytest.raises(asynclog.ConfigError, match="probe.yaml.*not allowed"):
        asynclog.config.read_config(path)
