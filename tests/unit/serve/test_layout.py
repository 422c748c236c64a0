"""The serve package's layering, read from the source with `ast` (nothing is imported):
the engine never imports the HTTP layer, and no serve module imports itself in a loop.
Imports anywhere count: module level, inside functions, under TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

import honed.serve

SERVE = Path(honed.serve.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SERVE.parent.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(tree: ast.AST, known: set[str]) -> set[str]:
    """The honed.serve modules a tree imports (`from pkg import mod` names the module)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SERVE.rglob("*.py")}
    known = set(files)
    return {
        name: _imported(ast.parse(path.read_text(), str(path)), known) - {name}
        for name, path in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop (a list of modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (loop := visit(nxt)):
                return loop
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (loop := visit(start)):
            return loop
    return None


def test_graph_covers_both_layers():
    graph = import_graph()
    assert "honed.serve.engine.core" in graph and "honed.serve.http.pipeline" in graph
    # The pipeline reaches the engine: the parser sees real edges.
    assert "honed.serve.engine.core" in graph["honed.serve.http.pipeline"]


def test_engine_does_not_import_http():
    graph = import_graph()
    wrong = {
        f"{mod} -> {dep}"
        for mod, deps in graph.items()
        if mod.startswith("honed.serve.engine")
        for dep in deps
        if dep.startswith("honed.serve.http")
    }
    assert not wrong, f"the engine must not know the HTTP layer: {sorted(wrong)}"


def test_no_import_cycle_in_serve():
    loop = find_cycle(import_graph())
    assert loop is None, "import cycle: " + " -> ".join(loop or [])


def test_find_cycle_sees_a_function_level_loop():
    """The checker itself: a loop closed by an import inside a function is found."""
    a = ast.parse("import honed.serve.b\n")
    b = ast.parse("def f():\n    from honed.serve import a\n")
    known = {"honed.serve.a", "honed.serve.b"}
    graph = {"honed.serve.a": _imported(a, known), "honed.serve.b": _imported(b, known)}
    assert find_cycle(graph) == ["honed.serve.a", "honed.serve.b", "honed.serve.a"]


def test_inference_routes_only_call_the_pipeline():
    """A chat, completion or classify request goes route -> pipeline -> engine: the route
    modules reach neither the engine nor the tracking/guard steps themselves."""
    graph = import_graph()
    allowed = {
        "honed.serve.http.pipeline",
        "honed.serve.http.deps",
        "honed.serve.http.errors",
        "honed.serve.http.schemas",
        "honed.serve.http.routes",
    }
    for route in ("chat", "completions", "classify", "sagemaker"):
        deps = graph[f"honed.serve.http.routes.{route}"]
        assert "honed.serve.http.pipeline" in deps and deps <= allowed, (route, deps - allowed)
