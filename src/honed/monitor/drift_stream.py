"""Drift over a window of any size: the request log read in chunks, memory bounded.

:func:`honed.monitor.window.load_window` holds the whole window (texts, embeddings, labels)
in memory: fine for 100,000 requests, not for 10 million. :func:`stream_drift` reads the
same rows (those with an input text, in ``[since, until)``, optionally of one served model)
by keyset pagination on the primary key, ``chunk_size`` rows per query, each query its own
short transaction (a long read would pin SQLite's WAL or a PostgreSQL snapshot while the
server keeps logging), and keeps only sums:

- text features: texts per reference length bin, total words, out-of-vocabulary words,
  texts per language (``text_length``, ``oov_rate``, ``language``);
- predicted-label counts (``predictions``), the sum of confidences and their histogram
  (``confidence``).

These components come out equal to the in-memory check's (the same functions of
:mod:`honed.monitor.drift` applied to the same sums; the confidence mean is summed per chunk,
equal to 1e-12).

The embedding components (``embedding_cells``, ``embedding_pca``, ``domain_classifier``,
``novelty``) need one sentence embedding per text: embedding 10 million texts with MiniLM on
two CPU cores takes hours, so they are measured on a uniform reservoir sample of
``embed_sample`` texts of the window (Algorithm R, seeded), cached embeddings used where the
log has them, the others embedded and cached. Their thresholds are calibrated for the
sample's size, the others' for the window's; the report's ``stream`` block names the sample
size. When the window has at most ``embed_sample`` texts the sample is the whole window, in
order, and the report equals :func:`honed.monitor.window.drift_for_window`'s.

Memory: one chunk of rows plus the reservoir (``embed_sample`` texts) plus the counters,
whatever the window's size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import func, select

from honed.errors import HonedError
from honed.evals import textstats
from honed.evals.profile import CONFIDENCE_EDGES, ReferenceProfile, TextEmbedder
from honed.evals.profile import check_unit_interval as unit_interval
from honed.monitor import calibration, drift
from honed.monitor.calibration import Sample
from honed.monitor.config import DriftConfig
from honed.monitor.requestlog import RequestRow, RequestStore, as_utc
from honed.monitor.window import row_embeddings

DEFAULT_CHUNK = 50_000
DEFAULT_EMBED_SAMPLE = 10_000
EMBEDDING_COMPONENTS = ("embedding_cells", "embedding_pca", "domain_classifier", "novelty")
_COLUMNS = (RequestRow.pk, RequestRow.input_text, RequestRow.predicted_label, RequestRow.score)


class Reservoir:
    """A uniform sample of at most ``size`` items of a stream (Algorithm R, seeded): the
    first ``size`` items in order, then item t (0-based) replaces a random slot with
    probability size / (t + 1)."""

    def __init__(self, size: int, seed: int = 0):
        if size < 1:
            raise HonedError(f"embedding sample size must be >= 1, got {size}")
        self.size, self.seen = size, 0
        self.items: list[Any] = []
        self._rng = np.random.default_rng(seed)

    def extend(self, items: list[Any]) -> None:
        fill = min(max(self.size - len(self.items), 0), len(items))
        self.items.extend(items[:fill])
        rest = items[fill:]
        if rest:
            # Slot j in [0, t] for the item seen t-th, one uniform double each: unlike
            # Generator.integers (which buffers 32-bit halves per call), the draws do not
            # depend on how the stream is cut into chunks.
            seen = np.arange(self.seen + fill, self.seen + len(items)) + 1
            slots = (self._rng.random(len(rest)) * seen).astype(np.int64)
            for i in np.flatnonzero(slots < self.size):
                self.items[slots[i]] = rest[i]
        self.seen += len(items)


@dataclass
class StreamSums:
    """What the streamed check keeps of the rows it has read."""

    n_bins: int
    texts: int = 0
    total_words: float = 0.0
    unknown_words: int = 0
    languages: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)
    conf_total: float = 0.0
    length_counts: np.ndarray = field(init=False)  # texts per reference length bin
    conf_counts: np.ndarray = field(init=False)  # confidences per CONFIDENCE_EDGES bin
    chunks: int = 0
    max_rows_held: int = 0  # the most rows of the log held at once (one chunk)

    def __post_init__(self) -> None:
        self.length_counts = np.zeros(self.n_bins, dtype=np.int64)
        self.conf_counts = np.zeros(len(CONFIDENCE_EDGES) - 1, dtype=np.int64)

    def add(self, profile: ReferenceProfile, rows: list[Any], vocab: frozenset[str]) -> None:
        _pks, texts, labels, scores = zip(*rows, strict=True)  # columns: cheaper than Row.attr
        lengths, unknown, langs = textstats.analyse_counts(texts, vocab)
        edges = profile.length_edges
        bins = np.searchsorted(edges, lengths, side="right")
        self.length_counts += np.bincount(bins, minlength=len(edges) + 1)
        self.total_words += float(lengths.sum())
        self.unknown_words += unknown
        self.languages.update(langs)
        self.texts += len(rows)
        # str(): as profile.shares counts labels
        self.labels.update(str(label) for label in labels if label is not None)
        conf = [score for score in scores if score is not None]
        if conf:
            values = unit_interval(np.asarray(conf, dtype=np.float64))
            self.conf_total += float(values.sum())
            self.conf_counts += drift.confidence_hist(values)
        self.chunks += 1
        self.max_rows_held = max(self.max_rows_held, len(rows))

    @property
    def n_predictions(self) -> int:
        return sum(self.labels.values())

    @property
    def n_confidences(self) -> int:
        return int(self.conf_counts.sum())

    def text_stats(self) -> drift.TextStats:
        n = max(self.texts, 1)
        words = int(self.total_words)
        return drift.TextStats(
            self.length_counts,
            self.total_words,
            self.unknown_words / words if words else 0.0,
            {lang: self.languages.get(lang, 0) / n for lang in textstats.LANGUAGES},
        )


def iter_chunks(
    store: RequestStore,
    since: datetime | None = None,
    until: datetime | None = None,
    model: str | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> Iterator[list[Any]]:
    """Rows (pk, input_text, predicted_label, score) with an input text, ``chunk_size`` at a
    time in primary-key order: ``WHERE pk > last ... ORDER BY pk LIMIT chunk_size``, one
    short query each (no cursor held open across chunks)."""
    if chunk_size < 1:
        raise HonedError(f"chunk size must be >= 1, got {chunk_size}")
    where = []
    if since is not None:
        where.append(RequestRow.created_at >= as_utc(since))
    if until is not None:
        where.append(RequestRow.created_at < as_utc(until))
    if model is not None:
        where.append(RequestRow.model == model)
    first, end = _key_range(store, where)
    if first is None:
        return
    last = first - 1
    query = select(*_COLUMNS).where(
        RequestRow.input_text.is_not(None), RequestRow.input_text != "", *where
    )
    if end is not None:
        query = query.where(RequestRow.pk <= end)
    while True:
        page = query.where(RequestRow.pk > last)
        with store.engine.connect() as conn:
            rows = conn.execute(page.order_by(RequestRow.pk).limit(chunk_size)).all()
        if not rows:
            return
        yield rows
        last = rows[-1].pk
        if len(rows) < chunk_size:
            return


def _key_range(store: RequestStore, where: list) -> tuple[int | None, int | None]:
    """The smallest and largest primary key in the window ((0, None): the whole log; (None,
    None): an empty window), so that a window inside a long log does not scan the rows
    around it. ``pk + 0``: for min(pk) SQLite would walk the table in key order; this way it
    reads the created_at index."""
    if not where:
        return 0, None
    key = RequestRow.pk + 0
    with store.engine.connect() as conn:
        first, end = conn.execute(select(func.min(key), func.max(key)).where(*where)).one()
    return first, end


def stream_drift(
    profile: ReferenceProfile,
    store: RequestStore,
    since: datetime | None = None,
    until: datetime | None = None,
    model: str | None = None,
    *,
    embedder: TextEmbedder | None = None,
    config: DriftConfig | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    embed_sample: int = DEFAULT_EMBED_SAMPLE,
    progress: Callable[[int], None] | None = None,
) -> drift.DriftReport:
    """The drift check of :func:`honed.monitor.window.drift_for_window` over the window
    ``[since, until)`` of ``store``, read in chunks (see the module docstring).
    ``progress(rows_so_far)`` is called after each chunk."""
    cfg = config or DriftConfig()
    sums = StreamSums(len(profile.length_edges) + 1)
    reservoir = Reservoir(embed_sample, cfg.seed)
    vocab = frozenset(profile.text["vocab"])
    for rows in iter_chunks(store, since, until, model, chunk_size):
        sums.add(profile, rows, vocab)
        reservoir.extend(rows)  # (pk, input_text, ...) rows, as fetched
        if progress is not None:
            progress(sums.texts)
    report = _report(profile, store, sums, reservoir, embedder, cfg)
    report.window_start = since.isoformat() if since else None
    report.window_end = (until or datetime.now(UTC)).isoformat()
    report.stream = {
        "rows": sums.texts,
        "chunk_size": chunk_size,
        "chunks": sums.chunks,
        "max_rows_held": sums.max_rows_held,
        "embedding_sample": len(reservoir.items),
        "embedding_sample_limit": embed_sample,
        "note": "embedding components measured on a uniform sample of the window's texts "
        "(embedding every text costs hours on CPU); text, label and confidence components "
        "on every row",
    }
    return report


def _report(
    profile: ReferenceProfile,
    store: RequestStore,
    sums: StreamSums,
    reservoir: Reservoir,
    embedder: TextEmbedder | None,
    cfg: DriftConfig,
) -> drift.DriftReport:
    n = sums.texts
    if n == 0 and cfg.expect_traffic:
        return drift._no_traffic()
    if n < cfg.min_window:
        return drift.DriftReport(drift.INSUFFICIENT, n, {})
    emb = _sample_embeddings(profile, store, reservoir.items, embedder)
    cutoff = calibration.novelty_cutoff(profile, cfg.novelty_quantile)
    results = drift.measure(profile, Sample(emb=emb), cfg, cutoff)
    results += drift.text_components_from(profile, sums.text_stats(), cfg)
    if sums.n_predictions >= cfg.min_window and (profile.predictions or profile.labels):
        labels = _shares(sums.labels)
        results.append(drift.prediction_shares_drift(profile, labels, sums.n_predictions, cfg))
    if sums.n_confidences >= cfg.min_window and profile.confidence:
        results.append(drift.confidence_sums_drift(profile, sums.conf_total, sums.conf_counts, cfg))
    components = {r.name: r for r in results}
    info = _calibrate(profile, components, sums, len(emb), cfg, cutoff)
    return drift.DriftReport(drift.overall_status(components, cfg), n, components, calibration=info)


def _shares(counts: Counter) -> dict[str, float]:
    """As :func:`honed.evals.profile.shares` of the values counted."""
    n = max(sum(counts.values()), 1)
    return {k: c / n for k, c in sorted(counts.items())}


def _sample_embeddings(
    profile: ReferenceProfile,
    store: RequestStore,
    items: list[Any],
    embedder: TextEmbedder | None,
) -> np.ndarray:
    """(m, d) embeddings of the sampled rows: cached ones read by primary key (only for the
    sample, never for the whole window), the others embedded and cached."""
    cached: dict[int, bytes | None] = {}
    pks = [item[0] for item in items]
    for start in range(0, len(pks), 500):  # bounded IN lists
        part = pks[start : start + 500]
        query = select(RequestRow.pk, RequestRow.embedding).where(RequestRow.pk.in_(part))
        with store.engine.connect() as conn:
            cached.update((r.pk, r.embedding) for r in conn.execute(query))
    rows = [{"pk": i[0], "input_text": i[1], "embedding": cached.get(i[0])} for i in items]
    return row_embeddings(store, rows, embedder, profile.dim)


def _calibrate(
    profile: ReferenceProfile,
    components: dict[str, drift.ComponentResult],
    sums: StreamSums,
    n_sample: int,
    cfg: DriftConfig,
    cutoff: float | None,
) -> dict[str, Any]:
    """Thresholds for the window's size, and for the embedding sample's size for the
    embedding components (one family: every call splits the false-alarm rate over all)."""
    if not cfg.calibrate:
        return {"calibrated": [], "reason": drift.CALIBRATE_OFF}
    names = list(components)
    n_pred, n_conf = sums.n_predictions, sums.n_confidences
    cal = drift.null_thresholds(profile, names, sums.texts, cfg, cutoff, n_pred, n_conf)
    if n_sample < sums.texts:
        small = drift.null_thresholds(profile, names, n_sample, cfg, cutoff, n_pred, n_conf)
        for name in EMBEDDING_COMPONENTS:
            if name in small.thresholds:
                cal.thresholds[name] = small.thresholds[name]
        cal.info["embedding_sample"] = n_sample
    return drift.apply_calibration(profile, components, cal)
