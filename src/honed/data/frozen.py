"""The frozen evaluation set and the golden file of a model.

Every run writes its test split as ``eval/frozen_test.jsonl`` ({"text", "label"} per line) with
a sidecar ``eval/frozen_test.meta.json`` (sha256 of the jsonl bytes, rows, origin). A later run
of the same registered name reuses the champion's file byte for byte as its test split, so the
champion and every challenger are measured on the same examples; rows of the new data whose
normalised text hash is in it are kept out of train and validation (no leakage), and new data
never enters it. The golden file holds must-keep examples the gate checks one by one; runs
copy it forward the same way. Finding the champion is the pipeline's job (data/ sits below the
registry); this module only reads, checks and writes the files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from honed.errors import DataError

_WS = re.compile(r"\s+")

#: Row keys that record where a row came from; never part of a model's input or a frozen set.
PROVENANCE = ("line", "origin")


def normalise(text: str) -> str:
    """Case- and whitespace-insensitive key for leakage checks."""
    return _WS.sub(" ", text).strip().lower()


def text_hash(text: str) -> str:
    """sha256 of the normalised text: what the leakage check against a frozen set compares."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def meta_path(path: Path) -> Path:
    """The sidecar of a frozen set or golden file: ``frozen_test.meta.json``."""
    return path.with_name(f"{path.stem}.meta.json")


@dataclass
class EvalSet:
    """A frozen evaluation set (or golden file) read from disk."""

    path: Path
    rows: list[dict[str, Any]]
    sha256: str
    origin: dict[str, Any] = field(default_factory=dict)  # from the sidecar, when there is one
    ref: str = ""  # what it was found as (e.g. "NAME/3 (champion)"), for reports

    @property
    def hashes(self) -> set[str]:
        return {text_hash(r["text"]) for r in self.rows}

    @property
    def labels(self) -> set[str]:
        return {r["label"] for r in self.rows}


def _parse_line(text: str, where: str, fields: tuple[str, ...]) -> dict[str, Any]:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: broken JSON ({err.msg})") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: a line must be a JSON object")
    for key in fields:
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise DataError(f"{where}: needs a non-empty string field {key!r}")
    return row


def read_eval_set(
    path: str | Path,
    setting: str,
    labels: list[str] | None = None,
    fields: tuple[str, ...] = ("text", "label"),
) -> EvalSet:
    """A jsonl of objects with non-empty ``fields`` (classification: text and label); a clear
    error naming ``setting``, the file and line when it is missing, broken, empty or carries a
    label outside ``labels``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{setting}: {path}: file not found")
    raw = path.read_bytes()
    rows = []
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if line.strip():
            rows.append(_parse_line(line, f"{setting}: {path}:{number}", fields))
    if not rows:
        raise DataError(f"{setting}: {path}: holds no rows")
    if labels is not None and "label" in fields:
        unknown = sorted({r["label"] for r in rows} - set(labels))
        if unknown:
            raise DataError(
                f"{setting}: {path}: label(s) {unknown} are not among the data's labels {labels}"
            )
    origin = {}
    if meta_path(path).is_file():
        origin = json.loads(meta_path(path).read_text(encoding="utf-8")).get("origin", {})
    return EvalSet(path, rows, hashlib.sha256(raw).hexdigest(), origin)


def _write_meta(path: Path, sha256: str, rows: int, origin: dict[str, Any]) -> dict[str, Any]:
    meta = {
        "sha256": sha256,
        "rows": rows,
        "origin": origin,
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    meta_path(path).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return meta


def write_eval_set(
    rows: list[dict[str, Any]], path: Path, origin: dict[str, Any]
) -> dict[str, Any]:
    """Write rows (provenance dropped) as jsonl plus the sidecar; returns the sidecar."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(
        json.dumps({k: v for k, v in r.items() if k not in PROVENANCE}, ensure_ascii=False) + "\n"
        for r in rows
    ).encode("utf-8")
    path.write_bytes(body)
    return _write_meta(path, hashlib.sha256(body).hexdigest(), len(rows), origin)


def copy_eval_set(found: EvalSet, path: Path, origin: dict[str, Any]) -> dict[str, Any]:
    """Copy an evaluation set byte for byte (its hash unchanged) plus a sidecar naming where it
    came from; the first origin is kept so the chain back to the first version stays visible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if found.path.resolve() != path.resolve():
        shutil.copyfile(found.path, path)
    first = found.origin.get("first") or found.origin or {"file": found.path.name}
    return _write_meta(path, found.sha256, len(found.rows), {**origin, "first": first})
