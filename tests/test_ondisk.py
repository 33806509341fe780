"""asynclog/ondisk.py, the reading layer under the tools: what it may import."""

from __future__ import annotations

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "asynclog")
TOOLS = {"analysis", "cli", "dataset", "export", "plots"}


def _imports(module: str) -> set[str]:
    """The asynclog modules ``module`` imports, at its top or inside a function."""
    path = os.path.join(PACKAGE, module + ".py")
    if not os.path.exists(path):
        path = os.path.join(PACKAGE, module, "__init__.py")
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("asynclog."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("asynclog.")}
    return {m for m in found if os.path.exists(os.path.join(PACKAGE, m + ".py"))}


def test_the_reading_layer_imports_none_of_the_tools_that_sit_on_it():
    seen, todo = set(), ["ondisk"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += sorted(_imports(module))
    assert not seen & TOOLS, f"asynclog.ondisk reaches {sorted(seen & TOOLS)} through {sorted(seen)}"


def test_the_tools_read_run_files_only_through_the_reading_layer():
    """No tool opens a sidecar or a log's footer itself: the names of what ondisk reads appear in none."""
    for tool in sorted(TOOLS) + ["shards", "index"]:
        text = open(os.path.join(PACKAGE, tool + ".py"), encoding="utf-8").read()
        for reading in ("read_trailer(", "read_preamble(", "read_manifest", "_summary_decoder", "O_NONBLOCK"):
            assert reading not in text, f"{tool}.py reads {reading!r} itself"


def test_the_manifest_limit_holds_what_rank_0_writes_for_the_largest_world(tmp_path):
    """The limit is sized from what ``ranks.write_manifest`` writes: a manifest of MAX_WORLD_SIZE ranks, with
    the longest run name there may be, is read as a run folder."""
    from asynclog import names, ondisk, ranks

    ranks.write_manifest(str(tmp_path), "n" * names.MAX_NAME_BYTES, ranks.Placement(0, ondisk.MAX_WORLD_SIZE))
    assert os.path.getsize(tmp_path / ondisk.MANIFEST) <= ondisk.MANIFEST_LIMIT
    found = ondisk.run_folder(tmp_path)
    assert found is not None and found.problem is None and found.manifest.world_size == ondisk.MAX_WORLD_SIZE
    assert found.missing() == f"ranks 0-{ondisk.MAX_WORLD_SIZE - 1} ({ondisk.MAX_WORLD_SIZE} of " \
                              f"{ondisk.MAX_WORLD_SIZE}): no shard"
