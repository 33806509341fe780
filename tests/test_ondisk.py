"""asynclog/_ondisk.py, the reading layer under the tools: what it may import, and that the tools read through it."""

from __future__ import annotations

import os

from test_imports import graph

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "asynclog")
ABOVE = ("asynclog.tools", "asynclog.cli", "asynclog.probe", "asynclog.bench")  # what sits on the reading layer


def test_the_reading_layer_imports_none_of_the_tools_that_sit_on_it():
    edges = graph()
    seen, todo = set(), ["asynclog._ondisk"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += sorted(edges[module])
    above = sorted(m for m in seen if m.startswith(ABOVE))
    assert above == [], f"asynclog._ondisk reaches {above} through {sorted(seen)}"


def _tool_sources() -> list[str]:
    found = [os.path.join(PACKAGE, "_shards.py")]
    for sub in ("tools", "cli"):
        folder = os.path.join(PACKAGE, sub)
        found += [os.path.join(folder, name) for name in sorted(os.listdir(folder)) if name.endswith(".py")]
    return found


def test_the_tools_read_run_files_only_through_the_reading_layer():
    """No tool opens a sidecar or a log's footer itself: the names of what ondisk reads appear in none."""
    sources = _tool_sources()
    assert any(path.endswith(os.path.join("tools", "index.py")) for path in sources)
    for path in sources:
        text = open(path, encoding="utf-8").read()
        for reading in ("read_trailer(", "read_preamble(", "read_manifest", "_summary_decoder", "O_NONBLOCK",
                        "load_yaml(", "CONFIG_SUFFIX"):
            assert reading not in text, f"{os.path.relpath(path, PACKAGE)} reads {reading!r} itself"


def test_the_manifest_limit_holds_what_rank_0_writes_for_the_largest_world(tmp_path):
    """The limit is sized from what ``ranks.write_manifest`` writes: a manifest of MAX_WORLD_SIZE ranks, with
    the longest run name there may be, is read as a run folder."""
    from asynclog import _names as names
    from asynclog import _ondisk as ondisk
    from asynclog import _ranks as ranks

    ranks.write_manifest(str(tmp_path), "n" * names.MAX_NAME_BYTES, ranks.Placement(0, ondisk.MAX_WORLD_SIZE))
    assert os.path.getsize(tmp_path / ondisk.MANIFEST) <= ondisk.MANIFEST_LIMIT
    found = ondisk.run_folder(tmp_path)
    assert found is not None and found.problem is None and found.manifest.world_size == ondisk.MAX_WORLD_SIZE
    assert found.missing() == f"ranks 0-{ondisk.MAX_WORLD_SIZE - 1} ({ondisk.MAX_WORLD_SIZE} of " \
                              f"{ondisk.MAX_WORLD_SIZE}): no shard"
