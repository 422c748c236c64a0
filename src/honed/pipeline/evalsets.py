"""Which frozen evaluation set and golden file a run uses, and writing them into its folder.

The champion is found here, not in data/ (which sits below the registry): with
``eval.frozen_set: auto`` a run of a registered name that has a champion (NAME@champion) takes
that version's ``eval/frozen_test.jsonl`` as its test split, unchanged; without a champion, or
with the registry off, it splits as usual. Every run then writes its test split (reused or new)
as its own frozen set, so the next challenger finds it in whichever version becomes champion.
The golden file (``eval.golden``) is copied the same way, inherited from the champion when the
spec names none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from honed.data.frozen import EvalSet, copy_eval_set, read_eval_set, write_eval_set
from honed.errors import RegistryError, SpecError
from honed.paths import RunPaths, portable_path

if TYPE_CHECKING:
    from honed.data.dataset import SplitData
    from honed.spec import RunSpec

logger = logging.getLogger(__name__)


@dataclass
class EvalSets:
    frozen: EvalSet | None = None  # the test split to reuse; None: split anew
    golden: EvalSet | None = None  # to copy into the run folder
    champion: str | None = None  # "NAME/3" when a champion was looked up and found


def champion_folder(spec: RunSpec) -> tuple[str, Path] | None:
    """(``NAME/VERSION``, folder) of the registered name's champion; None when the registry is
    off, the name has no versions or none is champion."""
    if not spec.registry.enabled:
        return None
    from honed.registry.store import Registry

    registry = Registry(spec.registry)
    name = spec.registered_name()
    if not registry.versions(name):
        return None
    try:
        version = registry.get_version(f"{name}@champion")
    except RegistryError:  # registered, but nothing promoted yet
        return None
    return f"{name}/{version.version}", registry.local_folder(version)


def _path(spec: RunSpec, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else spec.base_dir / path


def _frozen(spec: RunSpec, reusable: bool, champion: tuple[str, Path] | None) -> EvalSet | None:
    setting = spec.eval.frozen_set
    if setting == "none" or (setting == "auto" and (not reusable or champion is None)):
        return None
    if setting == "auto":
        assert champion is not None
        ref, folder = champion
        path = RunPaths(folder).frozen_eval
        if not path.is_file():  # a champion from before frozen sets existed
            logger.warning("champion %s has no frozen evaluation set; splitting anew", ref)
            return None
        found = read_eval_set(path, f"eval.frozen_set (auto: champion {ref})", spec.data.labels)
        found.ref = f"{ref} (champion)"
        return found
    if not reusable:
        raise SpecError(
            f"eval.frozen_set: task {spec.task!r} always splits its own test set; only "
            "classification reuses a frozen set (set auto or none)"
        )
    found = read_eval_set(_path(spec, setting), "eval.frozen_set", spec.data.labels)
    found.ref = str(found.path)
    return found


def _golden(spec: RunSpec, champion: tuple[str, Path] | None) -> EvalSet | None:
    classification = spec.task == "classification"
    fields = ("text", "label") if classification else ()
    labels = spec.data.labels if classification else None
    if spec.eval.golden:
        found = read_eval_set(_path(spec, spec.eval.golden), "eval.golden", labels, fields)
        found.ref = str(found.path)
        return found
    if champion is None or not RunPaths(champion[1]).golden.is_file():
        return None
    found = read_eval_set(RunPaths(champion[1]).golden, "golden file of the champion", None, ())
    found.ref = f"{champion[0]} (champion)"
    return found


def choose_eval_sets(spec: RunSpec, task: Any) -> EvalSets:
    """The frozen set and golden file this run uses (see the module's docstring)."""
    reusable = bool(getattr(task, "frozen_eval", False))
    wants_champion = (spec.eval.frozen_set == "auto" and reusable) or not spec.eval.golden
    champion = champion_folder(spec) if wants_champion else None
    return EvalSets(
        _frozen(spec, reusable, champion),
        _golden(spec, champion),
        champion[0] if champion else None,
    )


def write_eval_sets(spec: RunSpec, paths: RunPaths, data: SplitData, sets: EvalSets) -> None:
    """The run's frozen set (the reused one byte for byte, else its new test split) and the
    golden file, each with a sidecar saying where it came from."""
    if sets.frozen is not None:
        origin = {"kind": "reused", "ref": _portable(sets.frozen, paths), "run": spec.name}
        copy_eval_set(sets.frozen, paths.frozen_eval, origin)
    else:
        origin = {
            "kind": "split",
            "run": spec.name,
            "data_sha256": data.source_sha256,
            "split": spec.data.split.model_dump(),
        }
        write_eval_set(data.test, paths.frozen_eval, origin)
    if sets.golden is not None:
        kind = "given" if spec.eval.golden else "inherited"
        origin = {"kind": kind, "ref": _portable(sets.golden, paths)}
        copy_eval_set(sets.golden, paths.golden, origin)


def _portable(found: EvalSet, paths: RunPaths) -> str:
    """A file given by path, relative to the run folder (run folders hold no absolute path);
    a champion's set by its registry reference."""
    return portable_path(found.ref, paths.root) if found.ref == str(found.path) else found.ref
