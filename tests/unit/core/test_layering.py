"""Stages import only stages below them (function-level imports included), so that each can
be used and tested without the ones built on top of it."""

from __future__ import annotations

import ast
from pathlib import Path

import honed

#: Low -> high. Core modules sit at the bottom; cli at the top.
STAGES = ("core", "data", "models", "evals", "train", "registry", "pipeline", "serve", "monitor")
CORE = {"__init__", "errors", "config_base", "spec", "paths", "state", "plugins", "templates"}
TOP = {"cli", "security"}

#: Known exceptions: (importing stage or module, imported stage), and why.
ALLOWED = {
    # The spec validates task names and task_options against the task plugins.
    ("spec", "train"): "spec.py looks up the task plugins (names, options models)",
    # The server writes the request log and mounts the feedback route of monitor/.
    ("serve", "monitor"): "request log and feedback live in monitor/ (to be split out)",
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
