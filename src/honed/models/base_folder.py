"""Where a model folder's base lives on this machine.

Run-folder files record their base relative to the folder, as ``packaged:NAME`` or as a Hub
id (see ``honed.registry.lineage``); ``base_model_folder`` turns any of these (and older
absolute paths) back into a folder. A copy of a run folder elsewhere (a registered version, a
moved folder) finds a local base through this machine's index of base digests
(``$HONED_HOME/bases.json``: state, not an artifact).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from honed.models.resolve import ResolvedModel


def _bases_index() -> Path:
    from honed.state import state_dir

    return state_dir() / "bases.json"


def _read_index() -> dict[str, str]:
    try:
        data = json.loads(_bases_index().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember_base(base: ResolvedModel) -> None:
    """Note where a local base lives, by digest, so copies of run folders find it again."""
    if base.kind != "local":
        return
    index = _read_index()
    if index.get(base.digest) == str(base.path):
        return
    index[base.digest] = str(base.path)
    tmp = _bases_index().with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(_bases_index())


def base_model_folder(folder: Path, lineage: dict[str, Any], *more: str | None) -> Path | None:
    """The local folder of the base a model folder records (lineage ``base_model.path`` and
    ``source``, then `more` candidates such as adapter_config.json's): a path relative to
    `folder` (or an older absolute one), ``packaged:NAME``, the base digest in this machine's
    index, then a Hub id through honed's resolver (cache first). None if none is found."""
    base = lineage.get("base_model") or {}
    candidates = [str(c) for c in (base.get("path"), base.get("source"), *more) if c]
    for candidate in candidates:
        found = _local_folder(Path(folder), candidate)
        if found is not None:
            return found
    remembered = _read_index().get(str(base.get("digest")))
    if remembered and Path(remembered).is_dir():
        return Path(remembered)
    return _hub_folder(candidates)


def _local_folder(folder: Path, candidate: str) -> Path | None:
    from honed.errors import ModelError
    from honed.models.packaged import packaged_path

    if candidate.startswith("packaged:"):
        try:
            return packaged_path(candidate.removeprefix("packaged:"))
        except ModelError:
            return None
    local = folder / Path(candidate).expanduser()  # an absolute candidate stays absolute
    return local.resolve() if local.is_dir() else None


def _hub_folder(candidates: list[str]) -> Path | None:
    from honed.errors import ModelError
    from honed.models.config import ModelConfig
    from honed.models.packaged import hub_id_of
    from honed.models.resolve import locate

    for candidate in candidates:
        if candidate.startswith("packaged:") or hub_id_of(candidate) is None:
            continue
        try:
            return locate(ModelConfig(base=candidate))[0]
        except (ModelError, ValueError):
            continue
    return None
