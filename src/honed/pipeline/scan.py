"""The data scan of a run spec (``honed run`` before training, ``honed data scan SPEC``):
the spec's data prepared by its task, scanned by ``honed.security.scan`` with the spec's
``scan:`` policy, the cleaned rows left in the ``SplitData``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from honed.data.dataset import SplitData
    from honed.security.scan import ScanOutcome
    from honed.spec import RunSpec


class CachedEmbedder:
    """An embedder that encodes each distinct text once: the scan embeds every row, and the
    reference profile written after training embeds the (cleaned) training rows again."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self.name = getattr(embedder, "name", type(embedder).__name__)
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            self._cache.update(zip(todo, self.embedder.encode(todo), strict=True))
        if not texts:
            return self.embedder.encode([])
        return np.stack([self._cache[t] for t in texts])

    __call__ = encode


def scan_embedder(spec: RunSpec, base_path: Path | None = None) -> CachedEmbedder:
    """The embeddings the scan's label checks read: the packaged MiniLM, or the base model."""
    from honed.models.embed import Embedder

    if spec.scan.embeddings == "base":
        if base_path is None:
            from honed.models.resolve import resolve_model

            base_path = resolve_model(spec.model).path
        return CachedEmbedder(Embedder(base_path, max_length=spec.model.max_length))
    return CachedEmbedder(Embedder.packaged())


def raw_labels(spec: RunSpec) -> dict[str, set[str]]:
    """Normalised text -> every label it has in the spec's data sources (feedback sources
    excluded: corrections disagree with the data on purpose), before duplicates are dropped."""
    from honed.data.dataset import classification_rows, normalise
    from honed.data.sources import read_sources, resolve_sources

    sources = [s for s in resolve_sources(spec.data, spec.base_dir) if s.kind == "data"]
    if not sources:
        return {}
    read = read_sources(sources, lambda raw, src: classification_rows(raw, src.cfg))
    out: dict[str, set[str]] = {}
    for row in read.rows:
        out.setdefault(normalise(row["text"]), set()).add(row["label"])
    return out


def scan_data(
    spec: RunSpec, data: SplitData, embedder: CachedEmbedder | None = None
) -> ScanOutcome | None:
    """Scan ``data`` in place with the spec's policy (None when ``scan.enabled`` is false).
    A reused frozen test set is not scanned again: it is the champion's, scanned by its run,
    and must stay byte for byte the same. Does not raise on 'fail' findings."""
    from honed.security.scan import scan_split_data

    if not spec.scan.enabled:
        data.report["scan"] = {"enabled": False}
        return None
    labelled = spec.task == "classification"
    reused = bool((data.report.get("frozen_eval") or {}).get("reused"))
    return scan_split_data(
        data,
        spec.scan,
        labelled=labelled,
        embed=(embedder or scan_embedder(spec)) if labelled else None,
        raw_labels=raw_labels(spec) if labelled else None,
        skip=("test",) if reused else (),
    )


def summary_lines(outcome: ScanOutcome | None) -> list[str]:
    """The console lines of a scan: counts per kind and action, then the findings."""
    if outcome is None:
        return ["data scan: disabled (scan.enabled: false)"]
    report = outcome.report
    counts = ", ".join(f"{k} {n}" for k, n in report["findings"].items() if n) or "nothing found"
    lines = [f"data scan: {report['rows_scanned']} rows ({', '.join(report['splits'])}): {counts}"]
    if report["rows_dropped_total"]:
        lines.append(f"  rows dropped: {report['rows_dropped_total']}")
    redacted = sum(report["spans_redacted"].values())
    if redacted:
        lines.append(f"  spans redacted: {redacted}")
    return lines + outcome.lines() + [f"  note: {n}" for n in report["notes"]]
