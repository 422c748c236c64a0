"""Writing rendered manifests: every doc validated against its schema first, so that a
refusal leaves nothing behind; plain YAML (no anchors), one file per doc."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from honed.deploy.common import to_yaml
from honed.deploy.validate import validate_manifests


def manifest_files(docs: list[dict[str, Any]], out: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Where each doc goes: `<kind>.yaml`, or `<kind>-<name>.yaml` when a kind repeats."""
    kinds = [doc["kind"].lower() for doc in docs]
    files = []
    for kind, doc in zip(kinds, docs, strict=True):
        stem = kind if kinds.count(kind) == 1 else f"{kind}-{doc['metadata']['name']}"
        files.append((out / f"{stem}.yaml", doc))
    return files


def write_manifests(
    docs: list[dict[str, Any]], out: Path, extra: list[tuple[Path, dict[str, Any]]] | None = None
) -> list[Path]:
    """Validate every doc (and every `extra` (path, doc)) against its schema, then write each
    as plain YAML: a refusal leaves nothing behind."""
    files = [*manifest_files(docs, out), *(extra or [])]
    validate_manifests([doc for _, doc in files])
    for path, doc in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_yaml(doc))
    return [path for path, _ in files]
