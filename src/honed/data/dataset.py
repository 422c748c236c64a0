"""Clean, deduplicate, split and describe a data set.

The classification path: raw records -> ``Example`` rows (bad ones reported with file:line) ->
exact duplicates removed -> stratified train/validation/test split -> leakage check (no
normalised test text in train or validation) -> a data report.
Other tasks reuse ``split_rows``, ``remove_leaks`` and ``length_stats`` on their own rows.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from honed.data.config import DataConfig, SplitConfig
from honed.data.loaders import BadRow, RawData, load_raw
from honed.errors import DataError

SPLITS = ("train", "validation", "test")
_WS = re.compile(r"\s+")


@dataclass
class SplitData:
    """Rows per split (dicts; classification rows have ``text``, ``label``, ``line``)."""

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
                clean = {k: v for k, v in row.items() if k != "line"}
                h.update(f"{name}\t{json.dumps(clean, sort_keys=True, default=str)}\n".encode())
        return h.hexdigest()


def normalise(text: str) -> str:
    """Case- and whitespace-insensitive key for leakage checks."""
    return _WS.sub(" ", text).strip().lower()


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


def split_rows(
    rows: list[dict], cfg: SplitConfig, stratify_key: str | None = "label"
) -> tuple[list[dict], list[dict], list[dict]]:
    """Seeded train/validation/test split, stratified on ``stratify_key`` when set."""
    from sklearn.model_selection import train_test_split

    def strat(part: list[dict]) -> list[Any] | None:
        return [r[stratify_key] for r in part] if cfg.stratify and stratify_key else None

    try:
        rest, test = train_test_split(
            rows, test_size=cfg.test_size, random_state=cfg.seed, stratify=strat(rows)
        )
        train, validation = train_test_split(
            rest, test_size=cfg.validation_size, random_state=cfg.seed, stratify=strat(rest)
        )
    except ValueError as err:
        raise DataError(f"cannot split {len(rows)} rows as configured: {err}") from None
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


def load_classification(cfg: DataConfig, source: str) -> SplitData:
    """The whole classification data path, returning splits and a report."""
    raw = load_raw(source, cfg)
    rows, bad = classification_rows(raw, cfg)
    apply_bad_row_policy(bad, cfg, source)
    rows, dups, conflicts = dedup_rows(rows) if cfg.dedup else (rows, 0, 0)
    labels = list(cfg.labels) if cfg.labels else sorted({r["label"] for r in rows})
    if len(labels) < 2:
        raise DataError(f"{source}: need at least two labels, found {labels}")
    train, validation, test = split_rows(rows, cfg.split)
    leaks = remove_leaks(train, validation, test, key=lambda r: r["text"])
    data = SplitData(train, validation, test, labels=labels, source_sha256=raw.sha256)
    data.report = classification_report(
        data,
        {
            "source": source,
            "source_sha256": raw.sha256,
            "rows_read": len(raw.records) + len(raw.bad_rows),
            "bad_rows": [str(b) for b in bad],
            "duplicates_removed": dups,
            "duplicate_label_conflicts": conflicts,
            "leakage_removed": leaks,
            "split": cfg.split.model_dump(),
        },
    )
    data.report["content_sha256"] = data.content_sha256
    return data
