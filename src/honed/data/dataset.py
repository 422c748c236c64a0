"""Clean, deduplicate, split and describe a data set.

The classification path: raw records -> ``Example`` rows (bad ones reported with file:line) ->
exact duplicates removed -> stratified train/validation/test split -> leakage check (no
normalised test text in train or validation) -> a data report.
Other tasks reuse ``split_rows``, ``remove_leaks`` and ``length_stats`` on their own rows.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from honed.data.config import DataConfig, SplitConfig
from honed.data.frozen import PROVENANCE, EvalSet, normalise, text_hash
from honed.data.loaders import BadRow, RawData
from honed.data.sources import (
    Source,
    SourceRead,
    merge_rows,
    override_records,
    read_sources,
    resolve_sources,
)
from honed.errors import DataError

SPLITS = ("train", "validation", "test")
__all__ = ["normalise"]  # re-exported: callers import it from here


@dataclass
class SplitData:
    """Rows per split (dicts; classification rows have ``text``, ``label`` and the provenance
    ``line`` and ``origin``, which are never fed to a model)."""

    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    test: list[dict[str, Any]]
    labels: list[str] | None = None
    source_sha256: str = ""
    report: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[dict[str, Any]]:
        return getattr(self, name)

    @property
    def content_sha256(self) -> str:
        """Hash of the split contents: two runs with equal hashes saw the same data."""
        h = hashlib.sha256()
        for name in SPLITS:
            for row in self.split(name):
                clean = {k: v for k, v in row.items() if k not in PROVENANCE}
                h.update(f"{name}\t{json.dumps(clean, sort_keys=True, default=str)}\n".encode())
        return h.hexdigest()


def _as_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value)


def classification_rows(raw: RawData, cfg: DataConfig) -> tuple[list[dict], list[BadRow]]:
    """Turn records into {text, label, line} rows; bad rows are returned, not raised."""
    rows: list[dict] = []
    bad = list(raw.bad_rows)
    declared = set(cfg.labels) if cfg.labels else None
    for rec in raw.records:
        text = _as_text(rec.fields.get(cfg.text_field))
        label = _as_text(rec.fields.get(cfg.label_field))
        if label is not None:
            label = cfg.named_label(label)
        if text is None or not text.strip():
            bad.append(
                BadRow(rec.file, rec.line, f"empty or missing text field {cfg.text_field!r}")
            )
        elif label is None or not label.strip():
            bad.append(BadRow(rec.file, rec.line, f"missing label field {cfg.label_field!r}"))
        elif declared is not None and label.strip() not in declared:
            bad.append(BadRow(rec.file, rec.line, f"unknown label {label.strip()!r}"))
        else:
            rows.append({"text": text.strip(), "label": label.strip(), "line": rec.line})
    return rows, bad


def apply_bad_row_policy(bad: list[BadRow], cfg: DataConfig, source: str) -> None:
    if bad and cfg.on_bad_rows == "fail":
        shown = "\n".join(f"  - {b}" for b in bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DataError(
            f"{source}: {len(bad)} bad row(s):\n{shown}{more}\n"
            "Fix them, or set data.on_bad_rows: skip to drop them."
        )


def dedup_rows(rows: list[dict], key: str = "text") -> tuple[list[dict], int, int]:
    """Drop exact duplicates (first kept); returns rows, duplicates dropped, label conflicts."""
    seen: dict[str, dict] = {}
    conflicts = 0
    for row in rows:
        first = seen.get(row[key])
        if first is None:
            seen[row[key]] = row
        elif first.get("label") != row.get("label"):
            conflicts += 1
    return list(seen.values()), len(rows) - len(seen), conflicts


def _split(
    rows: list[dict], size: float, cfg: SplitConfig, stratify_key: str | None
) -> tuple[list[dict], list[dict]]:
    from sklearn.model_selection import train_test_split

    strat = [r[stratify_key] for r in rows] if cfg.stratify and stratify_key else None
    try:
        return train_test_split(rows, test_size=size, random_state=cfg.seed, stratify=strat)
    except ValueError as err:
        raise DataError(f"cannot split {len(rows)} rows as configured: {err}") from None


def split_rows(
    rows: list[dict], cfg: SplitConfig, stratify_key: str | None = "label"
) -> tuple[list[dict], list[dict], list[dict]]:
    """Seeded train/validation/test split, stratified on ``stratify_key`` when set."""
    rest, test = _split(rows, cfg.test_size, cfg, stratify_key)
    train, validation = _split(rest, cfg.validation_size, cfg, stratify_key)
    return train, validation, test


def split_with_frozen(
    rows: list[dict], frozen: EvalSet, read: SourceRead, cfg: SplitConfig
) -> tuple[list[dict], list[dict], list[dict]]:
    """The frozen set, unchanged, as the test split; the rows whose normalised text hash is in
    it are dropped (counted per source as leaked), the rest split into train/validation."""
    hashes = frozen.hashes
    pool = []
    for row in rows:
        if text_hash(row["text"]) in hashes:
            read.tallies[row["origin"]].lost["leaked_frozen"] += 1
        else:
            pool.append(row)
    train, validation = _split(pool, cfg.validation_size, cfg, "label")
    test = [
        {"text": r["text"], "label": r["label"], "line": i, "origin": "frozen eval set"}
        for i, r in enumerate(frozen.rows, start=1)
    ]
    return train, validation, test


def remove_leaks(
    train: list[dict], validation: list[dict], test: list[dict], key: Callable[[dict], str]
) -> dict[str, int]:
    """Drop train/validation rows whose normalised key occurs in test (in place).

    Exact duplicates are gone already; this catches case and whitespace variants, which would
    otherwise inflate test scores.
    """
    test_keys = {normalise(key(r)) for r in test}
    dropped = {}
    for name, part in (("train", train), ("validation", validation)):
        keep = [r for r in part if normalise(key(r)) not in test_keys]
        dropped[name] = len(part) - len(keep)
        part[:] = keep
    return dropped


def length_stats(texts: Sequence[str]) -> dict[str, float]:
    if not texts:
        return {}
    chars = np.array([len(t) for t in texts])
    words = np.array([len(t.split()) for t in texts])
    return {
        "chars_mean": round(float(chars.mean()), 1),
        "chars_p50": float(np.median(chars)),
        "chars_p95": float(np.percentile(chars, 95)),
        "chars_max": int(chars.max()),
        "words_mean": round(float(words.mean()), 1),
        "words_max": int(words.max()),
    }


def classification_report(data: SplitData, extra: dict[str, Any]) -> dict[str, Any]:
    counts = {
        name: dict(sorted(Counter(r["label"] for r in data.split(name)).items())) for name in SPLITS
    }
    return {
        "labels": data.labels,
        "rows": {name: len(data.split(name)) for name in SPLITS},
        "label_counts": counts,
        "length": {name: length_stats([r["text"] for r in data.split(name)]) for name in SPLITS},
        **extra,
    }


def _feedback_labels_known(read: SourceRead, declared: list[str] | None) -> None:
    """Without declared labels, a correction must use a label the data sources have: a typo
    ("banana") would otherwise become a class of its own."""
    if declared is not None:
        return  # classification_rows checked every row against the declared set
    kinds = {s.name: s.kind for s in read.sources}
    known = {r["label"] for r in read.rows if kinds[r["origin"]] == "data"}
    if not known:
        return
    keep = []
    for row in read.rows:
        if kinds[row["origin"]] == "feedback" and row["label"] not in known:
            tally = read.tallies[row["origin"]]
            tally.lost["bad_row"] += 1
            reason = f"unknown label {row['label']!r} (the data has {sorted(known)})"
            read.bad.append(BadRow(f"[{tally.name}] {tally.path}", row["line"], reason))
        else:
            keep.append(row)
    read.rows = keep


def _labels(cfg: DataConfig, rows: list[dict], frozen: EvalSet | None, where: str) -> list[str]:
    found = {r["label"] for r in rows} | (frozen.labels if frozen else set())
    labels = list(cfg.labels) if cfg.labels else sorted(found)
    if len(labels) < 2:
        raise DataError(f"{where}: need at least two labels, found {labels}")
    if frozen is not None and not frozen.labels <= set(labels):
        raise DataError(
            f"eval.frozen_set: {frozen.path} has label(s) {sorted(frozen.labels - set(labels))} "
            f"that are not declared in data.labels ({labels})"
        )
    return labels


def _leaks_by_source(read: SourceRead, train: list[dict], validation: list[dict], test) -> dict:
    """``remove_leaks``, with the rows it drops counted per source."""
    before = train + validation
    leaks = remove_leaks(train, validation, test, key=lambda r: r["text"])
    after = {id(r) for r in train + validation}
    for row in before:
        if id(row) not in after:
            read.tallies[row["origin"]].lost["leaked_test"] += 1
    return leaks


def _frozen_report(frozen: EvalSet | None, read: SourceRead) -> dict[str, Any]:
    if frozen is None:
        return {"reused": False}
    removed = sum(t.lost["leaked_frozen"] for t in read.tallies.values())
    return {
        "reused": True,
        "from": frozen.ref or str(frozen.path),
        "path": str(frozen.path),
        "sha256": frozen.sha256,
        "rows": len(frozen.rows),
        "removed_from_training": removed,
    }


def load_classification(
    cfg: DataConfig,
    source: str | None = None,
    *,
    sources: list[Source] | None = None,
    frozen: EvalSet | None = None,
) -> SplitData:
    """The whole classification data path, returning splits and a report.

    ``sources`` (from ``resolve_sources``) or one ``source`` path; ``frozen``: a frozen
    evaluation set used unchanged as the test split (see honed.data.frozen)."""
    if sources is None:
        single = cfg.model_copy(update={"source": source, "sources": None})
        sources = resolve_sources(single, Path())
    read = read_sources(sources, lambda raw, src: classification_rows(raw, src.cfg))
    _feedback_labels_known(read, cfg.labels)
    apply_bad_row_policy(read.bad, cfg, read.label)
    merged = merge_rows(read, cfg.dedup)
    rows = merged.rows
    labels = _labels(cfg, rows, frozen, read.label)
    if frozen is not None:
        train, validation, test = split_with_frozen(rows, frozen, read, cfg.split)
    else:
        train, validation, test = split_rows(rows, cfg.split)
    leaks = _leaks_by_source(read, train, validation, test)
    read.count_kept([train, validation, test])
    data = SplitData(train, validation, test, labels=labels, source_sha256=read.sha256)
    splits = {"train": train, "validation": validation, "test": test}
    data.report = classification_report(
        data,
        {
            "source": sources[0].path,
            "source_sha256": read.sha256,
            "rows_read": read.rows_read,
            "bad_rows": [str(b) for b in read.bad],
            "duplicates_removed": merged.duplicates,
            "duplicate_label_conflicts": merged.conflicts,
            "leakage_removed": leaks,
            "sources": read.report(),
            "overrides": override_records(merged.overrides, splits),
            "frozen_eval": _frozen_report(frozen, read),
            "split": cfg.split.model_dump(),
        },
    )
    data.report["content_sha256"] = data.content_sha256
    return data
