"""Lineage: everything needed to say where a model came from and to reproduce it."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from honed.paths import read_lineage  # noqa: F401 - moved to honed.paths; kept for importers

if TYPE_CHECKING:
    from honed.data.dataset import SplitData
    from honed.models.resolve import ResolvedModel
    from honed.spec import RunSpec

_PACKAGES = (
    "honed", "torch", "transformers", "peft", "trl", "accelerate", "datasets",
    "scikit-learn", "mlflow", "bitsandbytes",
)  # fmt: skip


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(folder: Path) -> dict[str, Any] | None:
    """HEAD commit of the repository holding `folder`, and whether the tree had changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return None


def spec_sha256(spec_dump: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec_dump, sort_keys=True).encode()).hexdigest()


def build_lineage(
    spec: RunSpec, base: ResolvedModel, data: SplitData, method_is_adapter: bool
) -> dict[str, Any]:
    dump = spec.model_dump(mode="json")
    return {
        "name": spec.name,
        "task": spec.task,
        "method": spec.method.name,
        "is_adapter": method_is_adapter,
        "labels": data.labels,
        "base_model": {
            "source": base.source,
            "kind": base.kind,
            "path": str(base.path),
            "digest": base.digest,
            "weight_sha256": base.weight_sha256,
        },
        "data": {
            "source": spec.data_source(),
            "source_sha256": data.source_sha256,
            "content_sha256": data.content_sha256,
            "rows": {k: len(data.split(k)) for k in ("train", "validation", "test")},
        },
        "spec": dump,
        "spec_sha256": spec_sha256(dump),
        "packages": package_versions(),
        "git": git_commit(spec.base_dir),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def lineage_tags(lineage: dict[str, Any]) -> dict[str, str]:
    """Flat string tags for the registry entry (MLflow tags are strings)."""
    git = lineage.get("git") or {}
    return {
        "task": lineage["task"],
        "method": lineage["method"],
        "base_model": lineage["base_model"]["source"],
        "base_digest": lineage["base_model"]["digest"],
        "data_sha256": lineage["data"]["source_sha256"],
        "data_content_sha256": lineage["data"]["content_sha256"],
        "spec_sha256": lineage["spec_sha256"],
        "git_commit": git.get("commit", "") + ("+dirty" if git.get("dirty") else ""),
        "honed_version": lineage["packages"].get("honed", ""),
    }
