"""Config: defaults, YAML loading, and errors that name the key and the file."""

from __future__ import annotations

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
