"""The package's import graph, read from the source (function-level imports included): layers that only point
down (the console script on top, then the benchmark harness, the tools, the probe application, the engine and its
errors), and no modules importing each other in a circle."""

from __future__ import annotations

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "asynclog")



def modules() -> dict[str, str]:
    found = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                dotted = os.path.relpath(path[:-3], os.path.dirname(PACKAGE)).replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def imports_of(module: str, path: str, known: dict) -> set[str]:
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    out = set()
    tree = ast.parse(open(path, encoding="utf-8").read())
    hooked = _display_hook_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in hooked:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            # ``from package import module`` imports the module; other names are the base module's.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        out |= {name for name in names if name in known and name != module}
    return out


# Jupyter's display hook (``_repr_html_``) is called from outside, when a notebook shows an object: a reader's
# object may be drawn there by the tool above it (asynclog.tools.report), which that hook imports. It is no part of
# the reader's own dependencies; an import anywhere else in the reader still counts.
_DISPLAY_HOOKS = {"_repr_html_"}


def _display_hook_nodes(tree: ast.AST) -> set[int]:
    return {id(inner) for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name in _DISPLAY_HOOKS
            for inner in ast.walk(node)}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {module: imports_of(module, path, known) for module, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in edges:
        if v not in index:
            visit(v)
    return found


# From the top down: a module may import its own layer and the layers below it, never one above.
LAYERS = (
    ("asynclog.cli", "asynclog.__main__"),  # argparse and exit statuses
    ("asynclog.bench",),  # the peer-benchmark harness, over the public surface
    ("asynclog.tools",),  # the after-the-run tools, as library functions
    ("asynclog.probe",),  # the entropy probe's application
    ("asynclog", "asynclog.config", "asynclog._"),  # the engine: the public surface and its machinery
    ("asynclog.errors",),
)


def layer_of(module: str) -> int:
    """The index in LAYERS of the most specific prefix that names ``module``."""
    best, depth = None, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            hit = module == prefix or module.startswith(prefix + ".") or (prefix.endswith("_") and
                                                                           module.startswith(prefix))
            if hit and len(prefix) > depth:
                best, depth = i, len(prefix)
    assert best is not None, f"{module} is in no layer; add it to LAYERS"
    return best


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {t}" for m, targets in edges.items() for t in targets if layer_of(t) < layer_of(m))


def test_every_import_points_down_the_layers():
    assert upward_imports(graph()) == []


def test_the_layer_check_sees_an_upward_import():
    assert upward_imports({"asynclog._writer": {"asynclog.probe.layout"}, "asynclog.tools.diff": {"asynclog._format"}}) \
        == ["asynclog._writer -> asynclog.probe.layout"]


def test_no_module_but_the_entry_point_imports_the_console_script():
    importers = {module for module, targets in graph().items() if any(t.startswith("asynclog.cli") for t in targets)}
    assert importers <= {"asynclog.__main__"} | {m for m in importers if m.startswith("asynclog.cli")}, \
        f"these import the console script: {sorted(importers)}"


def test_no_modules_import_each_other_in_a_circle():
    # The peer-benchmark harness (asynclog.bench, a product of its own) still has one inside itself.
    found = [c for c in cycles(graph()) if not all(m.startswith("asynclog.bench") for m in c)]
    assert found == [], [sorted(c) for c in found]


def test_a_display_hook_import_is_not_a_dependency():
    tree = ast.parse("def _repr_html_(self):\n    from .report import card\ndef other():\n    from .report import x\n")
    hooked = _display_hook_nodes(tree)
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert [id(n) in hooked for n in imports] == [True, False]


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
