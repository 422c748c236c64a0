"""Lineage: everything needed to say where a model came from and to reproduce it.

Files written into a run folder hold no absolute local path: a local base or data file is
recorded relative to the run folder (``../models/base``), a packaged base as
``packaged:NAME`` and a hub base by its id; sha256 digests identify the exact files.
``base_model_folder`` turns any of these forms (and older absolute ones) back into a folder;
a copy of the run folder elsewhere (a registered version, a moved folder) finds a local base
through this machine's index of base digests (``.honed/bases.json``: state, not an artifact).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from honed.models.base_folder import base_model_folder, remember_base
from honed.paths import portable_path, read_lineage

__all__ = ["base_model_folder", "portable_path", "read_lineage", "remember_base"]

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


def portable_spec(spec: RunSpec, root: Path | None) -> dict[str, Any]:
    """The spec as run, with local paths relative to `root` (the run folder; a spec.yaml
    there resolves data paths against its own folder, so it reruns from there)."""
    dump = spec.model_dump(mode="json")
    if root is None:
        return dump
    dump["model"]["base"] = portable_path(_local(spec.model.base), root)
    if spec.data.sources is None:
        dump["data"]["source"] = portable_path(spec.data_source(), root)
    for entry, src in zip(dump["data"]["sources"] or [], _sources(spec), strict=False):
        entry["path"] = portable_path(src.path, root)
    from honed.evals.graders import relocate_reward_models

    relocate_reward_models(
        (dump.get("task_options") or {}).get("graders") or [], spec.base_dir, root
    )
    # Where this run wrote is the folder holding the spec; a rerun picks its own.
    dump["output_dir"] = None
    return dump


def _sources(spec: RunSpec) -> list:
    from honed.data.sources import resolve_sources

    return resolve_sources(spec.data, spec.base_dir) if spec.data.sources else []


def _local(base: str) -> str:
    """A base that names a local folder, as that folder (relative paths: against the cwd,
    as ``honed.models.resolve.locate`` reads them)."""
    path = Path(base).expanduser()
    return str(path.resolve()) if path.is_dir() else base


def base_record(base: ResolvedModel, root: Path | None) -> dict[str, Any]:
    """lineage.json's ``base_model``: where to find the base again, and its digests."""
    from honed.models.packaged import hub_id_of

    # packaged:NAME and hub ids are found again by name, through honed.models.resolve.
    where = portable_path(base.path, root) if base.kind == "local" else base.source
    return {
        "source": portable_path(_local(base.source), root),
        "kind": base.kind,
        "path": where,
        "hub_id": hub_id_of(base.source),
        "digest": base.digest,
        "weight_sha256": base.weight_sha256,
    }


def portable_report(report: dict[str, Any], root: Path) -> dict[str, Any]:
    """data_report.json with its data sources (and a reused frozen set) relative to the run
    folder."""
    out = dict(report)
    if "source" in out:
        out["source"] = portable_path(out["source"], root)
    if out.get("sources"):
        out["sources"] = [{**s, "path": portable_path(s["path"], root)} for s in out["sources"]]
    frozen = out.get("frozen_eval") or {}
    if frozen.get("path"):
        moved = portable_path(frozen["path"], root)
        same = frozen.get("from") == frozen["path"]
        out["frozen_eval"] = {**frozen, "path": moved, **({"from": moved} if same else {})}
    return out


def _pooling(spec: RunSpec, base: ResolvedModel) -> str | None:
    """A classifier's head input ('mean' or 'cls'); None for other tasks."""
    if spec.task != "classification":
        return None
    from honed.models.heads import resolve_pooling

    return resolve_pooling(spec.model.pooling, base.path)


def build_lineage(
    spec: RunSpec,
    base: ResolvedModel,
    data: SplitData,
    method_is_adapter: bool,
    root: Path | None = None,
) -> dict[str, Any]:
    """The lineage of a run writing into `root` (paths relative to it; None: as given)."""
    dump = portable_spec(spec, root)
    remember_base(base)
    return {
        "name": spec.name,
        "task": spec.task,
        "method": spec.method.name,
        "is_adapter": method_is_adapter,
        "labels": data.labels,
        "pooling": _pooling(spec, base),
        "base_model": base_record(base, root),
        "data": {
            "source": portable_path(spec.data_source(), root),
            "source_sha256": data.source_sha256,
            "content_sha256": data.content_sha256,
            "rows": {k: len(data.split(k)) for k in ("train", "validation", "test")},
            "sources": [
                {**s, "path": portable_path(s["path"], root)}
                for s in (data.report.get("sources") or [])
            ],
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
