"""Dependencies run one way: no two modules import each other (directly or around a loop),
counting imports inside functions too, and the board-side packages import nothing heavy of ours.

The import graph is read from the source (ast), with the folders mapped as pyproject maps them
(models/ -> edgekit.models, compile/ -> edgekit.compile, hw/ -> edgekit.hw).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"edgekit": "edgekit", "models": "edgekit.models", "compile": "edgekit.compile", "hw": "edgekit.hw"}


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join([package, *parts])] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the edgekit modules it imports (anywhere in its body)."""
    mods = _modules()

    def owner(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {owner(a.name) for a in node.names if a.name.startswith("edgekit")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
                if base.startswith("edgekit"):
                    deps |= {owner(f"{base}.{a.name}") if f"{base}.{a.name}" in mods else owner(base)
                             for a in node.names}
        graph[name] = deps - {name, ""}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports():
    """The reader finds what it must (or the cycle test below would pass on an empty graph)."""
    graph = import_graph()
    assert "edgekit.compile.tvm.importer" in graph["edgekit.compile.tvm.build"]
    assert "edgekit.runtime.artifact" in graph["edgekit.compile.tvm.build"]   # a lazy import counts
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_import_cycles():
    found = cycles(import_graph())
    assert not found, "modules that import each other: " + "; ".join(" <-> ".join(c) for c in found)


# No loop between packages either: the datasets ask the zoo for input shapes, and the recipe that
# calibrates SALE on the datasets lives in edgekit.train, not in the zoo.
ALLOWED_PACKAGE_CYCLES = []


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """edgekit.X -> the edgekit.Y packages its modules import (module edgekit.api is its own node)."""
    def top(name: str) -> str:
        return ".".join(name.split(".")[:2])

    packages: dict[str, set[str]] = {}
    for module, deps in graph.items():
        packages.setdefault(top(module), set()).update(top(d) for d in deps if top(d) not in ("edgekit", top(module)))
    return packages


def test_packages_depend_one_way():
    found = cycles(package_graph(import_graph()))
    assert found == ALLOWED_PACKAGE_CYCLES, "packages that import each other: " + "; ".join(
        " <-> ".join(c) for c in found)


def test_the_runtime_imports_nothing_heavy_of_ours():
    """edgekit.runtime runs on a board (Python, numpy, the TVM runtime): no quant, compile, eval,
    models, train or data module may be reachable from it."""
    graph = import_graph()
    reach, todo = set(), [m for m in graph if m.startswith("edgekit.runtime")]
    while todo:
        m = todo.pop()
        if m not in reach:
            reach.add(m)
            todo += graph.get(m, ())
    heavy_packages = ("quant", "compile", "eval", "models", "train", "data", "onnx_graph", "export")
    heavy = sorted(m for m in reach if m.count(".") and m.split(".")[1] in heavy_packages)
    assert not heavy, f"edgekit.runtime reaches {heavy}"
