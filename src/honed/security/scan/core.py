"""Run every check over a data set's rows, apply the spec's policy, and describe the result.

``scan_rows`` only finds; ``scan_split_data`` finds, then drops and rewrites rows of a
``SplitData`` in place (so training, the evaluation files and the reference profile all see
the cleaned rows) and returns the report section; ``ScanOutcome.raise_on_fail`` stops a run
when a ``fail`` policy matched.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from honed.data.dataset import SPLITS, SplitData, length_stats
from honed.security.scan import labels as label_checks
from honed.security.scan.config import ScanConfig
from honed.security.scan.findings import (
    KINDS,
    TEXT_KINDS,
    Finding,
    ScanFailed,
    describe,
    mask,
    where,
)
from honed.security.scan.text import redact_rows, text_findings
from honed.security.scan.triggers import find_triggers

Embed = Callable[[list[str]], np.ndarray]


def _labelled_findings(
    rows: list[dict[str, Any]],
    cfg: ScanConfig,
    embed: Embed | None,
    raw_labels: dict[str, set[str]] | None,
) -> tuple[list[Finding], list[str]]:
    """Duplicates, label errors, triggers and outliers of classification rows; also notes on
    checks that could not run."""
    notes: list[str] = []
    texts = [r["text"] for r in rows]
    names = sorted({r["label"] for r in rows})
    y = np.array([names.index(r["label"]) for r in rows], dtype=int)
    found = label_checks.conflicting_duplicates(rows, raw_labels)
    emb = embed(texts) if embed is not None and rows else None
    probs = None
    if emb is None:
        notes.append("label errors and embedding outliers: no embeddings")
    else:
        probs = label_checks.out_of_fold_probabilities(emb, y, len(names), cfg.folds)
        if probs is None:
            notes.append("label errors: a label has too few rows to cross-validate")
        else:
            found += label_checks.label_errors(probs, y, names)
    if len(names) >= 2:
        found += find_triggers(texts, y, names, cfg, emb, probs, embed)
    found += label_checks.outliers(emb, texts, cfg)
    return found, notes


def scan_rows(
    rows: list[dict[str, Any]],
    cfg: ScanConfig,
    *,
    labelled: bool,
    embed: Embed | None = None,
    raw_labels: dict[str, set[str]] | None = None,
) -> tuple[list[Finding], list[str]]:
    """Every finding over ``rows`` (text findings for every row; the label checks when the
    rows are labelled classification rows), and notes on checks skipped."""
    found: list[Finding] = []
    for i, row in enumerate(rows):
        found += text_findings(i, row, cfg)
    notes: list[str] = []
    if labelled and rows:
        more, notes = _labelled_findings(rows, cfg, embed, raw_labels)
        found += more
    return found, notes


@dataclass
class ScanOutcome:
    """What a scan found and did."""

    rows: list[dict[str, Any]]
    findings: list[Finding]
    policy: dict[str, str]
    notes: list[str] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    redacted: Counter = field(default_factory=Counter)
    report: dict[str, Any] = field(default_factory=dict)

    def action(self, finding: Finding) -> str:
        return self.policy[finding.kind]

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if self.action(f) == "fail"]

    def lines(self, findings: Iterable[Finding] | None = None, limit: int = 20) -> list[str]:
        chosen = list(self.findings if findings is None else findings)
        out = [f"  - [{self.action(f)}] {describe(f, self.rows)}" for f in chosen[:limit]]
        if len(chosen) > limit:
            out.append(f"  ... and {len(chosen) - limit} more (see data_report.json: scan)")
        return out

    def raise_on_fail(self) -> None:
        failures = self.failures
        if not failures:
            return
        kinds = sorted({f.kind for f in failures})
        raise ScanFailed(
            f"data scan: {len(failures)} finding(s) whose policy is 'fail':\n"
            + "\n".join(self.lines(failures))
            + "\nFix the data, or set "
            + ", ".join(f"scan.policy.{k}" for k in kinds)
            + " to drop or warn (see `honed data scan SPEC`)."
        )


def _apply(outcome: ScanOutcome) -> set[int]:
    """Rewrite the spans of 'redact' findings in place; the rows of 'drop' findings."""
    to_redact = [f for f in outcome.findings if outcome.action(f) == "redact"]
    redact_rows(outcome.rows, to_redact)
    outcome.redacted.update(f.kind for f in to_redact)
    drop: set[int] = set()
    for f in outcome.findings:
        if outcome.action(f) == "drop":
            new = set(f.rows) - drop
            outcome.dropped[f.kind] += len(new)
            drop |= new
    return drop


def _example(f: Finding, rows: list[dict[str, Any]]) -> dict[str, Any]:
    example: dict[str, Any] = {"rows": [where(rows[i]) for i in f.rows[:10]], "detail": f.detail}
    if f.value:
        example["value"] = mask(f.value)
    first = rows[f.rows[0]]
    if "text" in first:
        example["text"] = str(first["text"])[:200]
    return example


def _section(outcome: ScanOutcome, cfg: ScanConfig, scanned: list[str]) -> dict[str, Any]:
    counts = Counter(f.kind for f in outcome.findings)
    return {
        "enabled": True,
        "splits": scanned,
        "rows_scanned": len(outcome.rows),
        "findings": {k: counts.get(k, 0) for k in KINDS},
        "policy": outcome.policy,
        "rows_dropped": {k: outcome.dropped.get(k, 0) for k in KINDS},
        "rows_dropped_total": sum(outcome.dropped.values()),
        "spans_redacted": {k: outcome.redacted.get(k, 0) for k in TEXT_KINDS},
        "failed": len(outcome.failures),
        "examples": {
            k: [_example(f, outcome.rows) for f in outcome.findings if f.kind == k][: cfg.examples]
            for k in KINDS
            if counts.get(k)
        },
        "notes": outcome.notes,
    }


def _refresh(data: SplitData, labelled: bool) -> None:
    """The data report's counts, after rows were dropped or rewritten."""
    report = data.report
    if "rows" in report:
        report["rows"] = {name: len(data.split(name)) for name in SPLITS}
    if labelled and "label_counts" in report:
        report["label_counts"] = {
            name: dict(sorted(Counter(r["label"] for r in data.split(name)).items()))
            for name in SPLITS
        }
    if labelled and "length" in report:
        report["length"] = {
            name: length_stats([r["text"] for r in data.split(name)]) for name in SPLITS
        }
    if "content_sha256" in report:
        report["content_sha256"] = data.content_sha256


def scrub(obj: Any, values: list[str]) -> Any:
    """``obj`` (a report: dicts, lists, strings) with every sensitive value masked."""
    if isinstance(obj, str):
        for value in values:
            if value in obj:
                obj = obj.replace(value, mask(value))
        return obj
    if isinstance(obj, dict):
        return {k: scrub(v, values) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub(v, values) for v in obj]
    return obj


def scan_split_data(
    data: SplitData,
    cfg: ScanConfig,
    *,
    labelled: bool,
    embed: Embed | None = None,
    raw_labels: dict[str, set[str]] | None = None,
    skip: tuple[str, ...] = (),
) -> ScanOutcome:
    """Scan the splits (but those in ``skip``, e.g. a reused frozen test set), apply the
    policy in place and add a ``scan`` section to ``data.report``. Does not raise on 'fail'
    findings: the caller decides (``raise_on_fail``)."""
    scanned = [name for name in SPLITS if name not in skip]
    rows = [row for name in scanned for row in data.split(name)]
    findings, notes = scan_rows(rows, cfg, labelled=labelled, embed=embed, raw_labels=raw_labels)
    outcome = ScanOutcome(rows, findings, cfg.policy.model_dump(), notes)
    drop = {id(rows[i]) for i in _apply(outcome)}
    for name in scanned:
        data.split(name)[:] = [r for r in data.split(name) if id(r) not in drop]
    _refresh(data, labelled)
    outcome.report = _section(outcome, cfg, scanned)
    sensitive = sorted({f.value for f in findings if f.kind in TEXT_KINDS}, key=len, reverse=True)
    data.report = scrub(data.report, sensitive)
    data.report["scan"] = outcome.report
    return outcome
