"""File-name discovery of plugin modules (methods, tasks): one module, one plugin."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from typing import Any


def module_names(package_path: Iterable[str]) -> tuple[str, ...]:
    """Public module names in a package folder, sorted, without importing them."""
    return tuple(
        sorted(m.name for m in pkgutil.iter_modules(package_path) if not m.name.startswith("_"))
    )


def load_plugin(package: str, names: tuple[str, ...], name: str, attr: str, kind: str) -> Any:
    """``package.name.attr``; a KeyError listing the known names for an unknown one."""
    if name not in names:
        raise KeyError(f"unknown {kind} {name!r}; known: {', '.join(names)}")
    return getattr(importlib.import_module(f"{package}.{name}"), attr)
