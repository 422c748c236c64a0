"""Stages import only stages below them (function-level imports included), so that each can
be used and tested without the ones built on top of it."""

from __future__ import annotations

import ast
from pathlib import Path

import honed

#: Low -> high. Core modules sit at the bottom; cli at the top.
# monitor/ (request log, drift, feedback) is a library the server writes to and mounts, so it
# sits below serve/; the pipeline (honed run) sits above the registry it writes to.
# deploy/ renders manifests that run the server, training and the loop elsewhere (Kubernetes,
# Kubeflow, KServe, managed endpoints), so it sits on top of all of them.
# security/ (PII detection, data scan, guards, supply-chain checks, audit log) reads rows and
# loads models, and is used by everything from the request log to the pipeline and the server.
STAGES = (
    "core",
    "data",
    "models",
    "security",
    "evals",
    "train",
    "registry",
    "monitor",
    "pipeline",
    "serve",
    "deploy",
)
CORE = {"__init__", "errors", "config_base", "spec", "paths", "state", "plugins", "templates"}
TOP = {"cli", "__main__"}  # `python -m honed` is the CLI

#: Known exceptions: (importing stage or module, imported stage), and why.
ALLOWED = {
    # The spec validates task names and task_options against the task plugins.
    ("spec", "train"): "spec.py looks up the task plugins (names, options models)",
}


def _stage(parts: tuple[str, ...]) -> str:
    head = parts[0]
    if head in CORE:
        return "core"
    return head if head in STAGES or head in TOP else "core"


def _rank(stage: str) -> int:
    return len(STAGES) if stage in TOP else STAGES.index(stage)


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "honed":
                found += [(node.lineno, f"honed.{a.name}") for a in node.names]
            elif node.module.startswith("honed."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("honed.")]
    return found


def _violations() -> list[str]:
    root = Path(honed.__file__).parent
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("").parts
        source = "spec" if rel == ("spec",) else _stage(rel)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, module in _imports(tree):
            target = _stage(tuple(module.split(".")[1:]))
            if source == "spec":
                if rel == ("spec",) and module.endswith(".config"):
                    continue  # the spec is the stage configs composed
                if ("spec", target) in ALLOWED:
                    continue
                source_rank = 0
            else:
                source_rank = _rank(source)
            if _rank(target) > source_rank and (source, target) not in ALLOWED:
                out.append(f"{'/'.join(rel)}.py:{line} ({source}) imports {module} ({target})")
    return out


def test_no_stage_imports_a_higher_one() -> None:
    assert _violations() == []


def _module_graph() -> dict[str, set[str]]:
    """honed module -> the honed modules it imports (any level, TYPE_CHECKING excluded)."""
    root = Path(honed.__file__).parent
    names = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found = set()
        for module in _runtime_imports(tree):
            while module and module not in names:
                module = module.rpartition(".")[0]
            if module and module != name:
                found.add(module)
        graph[name] = found
    return graph


def _runtime_imports(tree: ast.AST) -> list[str]:
    """Modules imported outside `if TYPE_CHECKING:` blocks (type hints are no dependency);
    `from honed.pkg import mod` names the submodule when there is one."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return [m for m in found if m.startswith("honed.")]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of 2+ modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            comp = []
            while (top := stack.pop()) != node:
                comp.append(top)
            if comp:
                out.append(sorted([*comp, node]))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_no_import_cycle() -> None:
    assert _cycles(_module_graph()) == []


def test_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
