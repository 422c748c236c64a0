"""Drift: a window of traffic against the reference profile.

Components (each with a value, a status and details):

- ``embedding_cells``: PSI (and KL) of the share of texts per k-means cell.
- ``embedding_pca``: PSI per principal component over reference quantile bins; the status uses
  the mean over components, the details list each one (and KL).
- ``domain_classifier``: ROC AUC of a logistic regression telling reference embeddings from
  window embeddings, cross-validated; 0.5 = indistinguishable. This is Evidently's
  "model-based" embedding drift method.
- ``novelty``: share of window texts whose nearest reference text is less similar (cosine)
  than for all but ``novelty_quantile`` of held-out in-domain texts: a 30% mix of another
  kind of text shows here first, even in small windows.
- ``text_length``: PSI of words-per-text over reference quantile bins.
- ``oov_rate``: increase of the out-of-vocabulary word rate over the reference's.
- ``language``: total variation distance between language shares (stopword heuristic).
- ``predictions``: PSI of the predicted-label distribution against the eval predictions.
- ``confidence``: drop of the mean confidence against the eval confidences.

PSI = sum((w - r) * ln(w / r)) over bins (shares smoothed by ``epsilon``). Conventional
reading: < 0.1 no significant change, 0.1-0.2 moderate, > 0.2 significant.

Thresholds: each component's fixed thresholds (DriftConfig) are the smallest change worth
reporting; with ``calibrate`` (default) they are raised to what in-domain windows of the same
size reach by chance (:mod:`honed.monitor.calibration`, family-wise over the components), so
an in-domain window alerts with probability at most ``false_alarm_rate`` whatever its size.
Below ``min_window`` texts the answer is ``insufficient_data``, never an alert; an empty window
when ``expect_traffic`` is set is the ``traffic`` alert.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from honed.errors import HonedError
from honed.evals import textstats
from honed.evals.profile import (
    CONFIDENCE_EDGES,
    ReferenceProfile,
    TextEmbedder,
    bin_shares,
    check_unit_interval,
    shares,
)
from honed.monitor import calibration
from honed.monitor.calibration import Sample
from honed.monitor.config import DriftConfig

OK, WARN, ALERT, SKIPPED, INSUFFICIENT = "ok", "warn", "alert", "skipped", "insufficient_data"
_SEVERITY = {SKIPPED: -1, OK: 0, WARN: 1, ALERT: 2}


@dataclass
class ComponentResult:
    name: str
    metric: str
    value: float | None
    status: str
    warn: float | None = None
    alert: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class DriftReport:
    status: str
    window_size: int
    components: dict[str, ComponentResult]
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    window_start: str | None = None
    window_end: str | None = None
    # Service objectives over the same window (quality.service_objectives), when checked.
    objectives: dict[str, Any] | None = None
    # How the thresholds were calibrated (null size, draws, false-alarm rate), or why not.
    calibration: dict[str, Any] | None = None
    # A streamed check (honed.monitor.drift_stream): rows read, chunks, rows held at once,
    # the embedding sample's size.
    stream: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftReport:
        comps = {k: ComponentResult(**v) for k, v in data["components"].items()}
        return cls(**{**data, "components": comps})

    def alerts(self) -> list[ComponentResult]:
        return [c for c in self.components.values() if c.status in (WARN, ALERT)]

    @property
    def combined_status(self) -> str:
        """The drift status, raised to ``alert`` when a service objective is breached."""
        if self.objectives and self.objectives.get("breaches"):
            return ALERT
        return self.status


def smoothed(p: np.ndarray, eps: float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), eps, None)
    return p / p.sum()


def psi(reference: np.ndarray, window: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index between two share vectors of equal length."""
    r, w = smoothed(reference, eps), smoothed(window, eps)
    return float(np.sum((w - r) * np.log(w / r)))


def kl(reference: np.ndarray, window: np.ndarray, eps: float = 1e-4) -> float:
    """KL(window || reference) in nats."""
    r, w = smoothed(reference, eps), smoothed(window, eps)
    return float(np.sum(w * np.log(w / r)))


def grade(value: float, warn: float, alert: float) -> str:
    return ALERT if value >= alert else WARN if value >= warn else OK


def floor(cfg: DriftConfig, n_window: int) -> float:
    """Share floor for PSI/KL: half a count of the window (Jeffreys-style), or epsilon."""
    return max(cfg.epsilon, 0.5 / max(n_window, 1))


def _psi_result(name: str, value: float, cfg: DriftConfig, **details: Any) -> ComponentResult:
    return ComponentResult(
        name,
        "psi",
        value,
        grade(value, cfg.psi_warn, cfg.psi_alert),
        cfg.psi_warn,
        cfg.psi_alert,
        details,
    )


def cells_drift(profile: ReferenceProfile, emb: np.ndarray, cfg: DriftConfig) -> ComponentResult:
    """Nearest-centroid cell shares of ``emb`` (n, d) against the reference's (k,)."""
    centroids = profile.centroids.astype(np.float32)  # (k, d)
    # Squared distances without materialising (n, k, d): |x|^2 - 2 x.c + |c|^2.
    d2 = -2.0 * emb @ centroids.T + (centroids**2).sum(1)[None, :]  # (n, k), |x|^2 dropped
    cells = d2.argmin(1)
    window = np.bincount(cells, minlength=len(centroids)) / len(emb)
    ref, eps = profile.cell_shares, floor(cfg, len(emb))
    return _psi_result(
        "embedding_cells",
        psi(ref, window, eps),
        cfg,
        kl=kl(ref, window, eps),
        reference_shares=ref.tolist(),
        window_shares=window.tolist(),
    )


def pca_drift(profile: ReferenceProfile, emb: np.ndarray, cfg: DriftConfig) -> ComponentResult:
    proj = (emb - profile.pca_mean) @ profile.pca_components.T  # (n, c)
    psis, kls = [], []
    eps = floor(cfg, len(emb))
    for j in range(proj.shape[1]):
        window = bin_shares(proj[:, j], profile.pca_edges[j])
        ref = profile.pca_shares[j]
        psis.append(psi(ref, window, eps))
        kls.append(kl(ref, window, eps))
    return _psi_result(
        "embedding_pca",
        float(np.mean(psis)),
        cfg,
        per_component_psi=psis,
        per_component_kl=kls,
        max_psi=float(np.max(psis)),
        kl_mean=float(np.mean(kls)),
        explained_variance=profile.pca_explained.tolist(),
    )


def domain_classifier_auc(
    reference: np.ndarray,
    window: np.ndarray,
    folds: int = 5,
    max_samples: int = 1000,
    seed: int = 0,
    c: float = 0.1,
) -> float:
    """Cross-validated ROC AUC of logistic regression telling window rows (label 1) from
    reference rows (label 0); each side subsampled to ``max_samples`` and balanced."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    n = min(len(reference), len(window), max_samples)
    ref = reference[rng.choice(len(reference), n, replace=False)].astype(np.float32)
    win = window[rng.choice(len(window), n, replace=False)].astype(np.float32)
    x = np.concatenate([ref, win])  # (2n, d)
    y = np.concatenate([np.zeros(n), np.ones(n)])
    splitter = StratifiedKFold(n_splits=min(folds, n), shuffle=True, random_state=seed)
    clf = LogisticRegression(C=c, max_iter=1000)
    # One BLAS thread: on a busy 2-core machine a thread team makes these small fits ~10x
    # slower (measured 1.3 s vs 0.12 s per AUC), and calibration runs dozens of them.
    with threadpool_limits(limits=1, user_api="blas"):
        scores = cross_val_predict(clf, x, y, cv=splitter, method="decision_function")
    return float(roc_auc_score(y, scores))


def classifier_drift(
    profile: ReferenceProfile, emb: np.ndarray, cfg: DriftConfig
) -> ComponentResult:
    auc = domain_classifier_auc(
        profile.embedding_sample,
        emb,
        cfg.cv_folds,
        cfg.classifier_max_samples,
        cfg.seed,
        cfg.classifier_c,
    )
    status = grade(auc, cfg.auc_warn, cfg.auc_alert)
    return ComponentResult("domain_classifier", "roc_auc", auc, status, cfg.auc_warn, cfg.auc_alert)


def text_drift(profile: ReferenceProfile, texts: Sequence[str], cfg: DriftConfig) -> list:
    return text_components(profile, _text_sample(profile, texts), cfg)


def _text_sample(profile: ReferenceProfile, texts: Sequence[str]) -> Sample:
    lengths, rate, languages = textstats.analyse(texts, frozenset(profile.text["vocab"]))
    return Sample(lengths=lengths, oov_rate=rate, languages=languages)


def text_components(profile: ReferenceProfile, sample: Sample, cfg: DriftConfig) -> list:
    """Length PSI, OOV-rate rise and language TVD of a window's text features."""
    lengths = sample.lengths
    counts = np.bincount(
        np.searchsorted(profile.length_edges, lengths, side="right"),
        minlength=len(profile.length_edges) + 1,
    )
    stats = TextStats(counts, float(lengths.sum()), sample.oov_rate, sample.languages)
    return text_components_from(profile, stats, cfg)


@dataclass
class TextStats:
    """A window's text features as sums (what a streamed check accumulates chunk by chunk):
    texts per reference length bin, total words, OOV rate and language shares."""

    length_counts: np.ndarray  # (n_bins,) texts per bin of profile.length_edges
    total_words: float
    oov_rate: float
    languages: dict[str, float]

    @property
    def n(self) -> int:
        return int(self.length_counts.sum())


def text_components_from(profile: ReferenceProfile, stats: TextStats, cfg: DriftConfig) -> list:
    """:func:`text_components` from the window's sums (:class:`TextStats`)."""
    ref_text, n = profile.text, stats.n
    window_len = stats.length_counts / max(n, 1)  # as bin_shares
    length = _psi_result(
        "text_length",
        psi(np.asarray(ref_text["length_shares"]), window_len, floor(cfg, n)),
        cfg,
        reference_mean_words=ref_text["mean_words"],
        window_mean_words=stats.total_words / n if n else float("nan"),
    )
    rise = stats.oov_rate - ref_text["oov_rate"]
    oov = ComponentResult(
        "oov_rate",
        "oov_rise",
        rise,
        grade(rise, cfg.oov_warn, cfg.oov_alert),
        cfg.oov_warn,
        cfg.oov_alert,
        {"reference": ref_text["oov_rate"], "window": stats.oov_rate},
    )
    ref_lang, window_lang = ref_text["languages"], stats.languages
    tvd = 0.5 * sum(abs(window_lang.get(k, 0) - ref_lang.get(k, 0)) for k in textstats.LANGUAGES)
    lang = ComponentResult(
        "language",
        "tvd",
        tvd,
        grade(tvd, cfg.language_warn, cfg.language_alert),
        cfg.language_warn,
        cfg.language_alert,
        {"reference": ref_lang, "window": window_lang},
    )
    return [length, oov, lang]


def novelty_drift(
    profile: ReferenceProfile, sample: Sample, cfg: DriftConfig, cutoff: float
) -> ComponentResult:
    """Share of window rows less similar to every reference row than ``cutoff``."""
    novel = sample.novel
    if novel is None:
        novel = calibration.max_similarity(profile, sample.emb) < cutoff
    share = float(novel.mean())
    return ComponentResult(
        "novelty",
        "novel_share",
        share,
        grade(share, cfg.novelty_warn, cfg.novelty_alert),
        cfg.novelty_warn,
        cfg.novelty_alert,
        {"similarity_cutoff": cutoff, "expected_share": cfg.novelty_quantile},
    )


def prediction_drift(
    profile: ReferenceProfile, predictions: Sequence[Any], cfg: DriftConfig
) -> ComponentResult:
    return prediction_shares_drift(profile, shares(predictions), len(predictions), cfg)


def prediction_shares_drift(
    profile: ReferenceProfile, window: dict[str, float], n: int, cfg: DriftConfig
) -> ComponentResult:
    """PSI of the window's label shares (``shares`` of ``n`` predictions) on the reference's."""
    ref = profile.predictions or profile.labels or {}
    keys = sorted(set(ref) | set(window))
    r = np.array([ref.get(k, 0.0) for k in keys])
    w = np.array([window.get(k, 0.0) for k in keys])
    return _psi_result("predictions", psi(r, w, floor(cfg, n)), cfg, reference=ref, window=window)


def confidence_hist(conf: np.ndarray) -> np.ndarray:
    """Counts of confidences per bin of CONFIDENCE_EDGES."""
    return np.histogram(conf, bins=CONFIDENCE_EDGES)[0]


def confidence_drift(
    profile: ReferenceProfile, confidences: Sequence[float], cfg: DriftConfig
) -> ComponentResult:
    conf = np.asarray(confidences, dtype=np.float64)
    return confidence_sums_drift(profile, float(conf.sum()), confidence_hist(conf), cfg)


def confidence_sums_drift(
    profile: ReferenceProfile, total: float, counts: np.ndarray, cfg: DriftConfig
) -> ComponentResult:
    """Mean-confidence drop from the window's sum of confidences and per-bin ``counts``."""
    ref = profile.confidence or {}
    n = int(np.sum(counts))
    window = {
        "mean": total / n if n else 0.0,
        "hist": (np.asarray(counts) / max(n, 1)).tolist(),
    }
    drop = ref.get("mean", 0.0) - window["mean"]
    status = grade(drop, cfg.confidence_warn, cfg.confidence_alert)
    return ComponentResult(
        "confidence",
        "mean_drop",
        drop,
        status,
        cfg.confidence_warn,
        cfg.confidence_alert,
        {
            "reference_mean": ref.get("mean"),
            "window_mean": window["mean"],
            "window_hist": window["hist"],
        },
    )


def check_drift(
    profile: ReferenceProfile,
    texts: Sequence[str] | None = None,
    *,
    embeddings: np.ndarray | None = None,
    predictions: Sequence[Any] | None = None,
    confidences: Sequence[float] | None = None,
    embedder: TextEmbedder | None = None,
    config: DriftConfig | None = None,
) -> DriftReport:
    """Compare one window of traffic with ``profile``. Embedding components need
    ``embeddings`` (n, d) or ``texts`` + ``embedder``; text components need ``texts``;
    prediction/confidence components need those (at least ``min_window`` of them; they may
    cover part of the window) and a profile that holds them."""
    cfg = config or DriftConfig()
    n = _window_size(texts, embeddings)
    if n == 0 and cfg.expect_traffic:
        return _no_traffic()
    if n < cfg.min_window:
        return DriftReport(INSUFFICIENT, n, {})
    sample = _live_sample(profile, texts, embeddings, predictions, confidences, embedder, cfg)
    cutoff = calibration.novelty_cutoff(profile, cfg.novelty_quantile)
    components = {r.name: r for r in measure(profile, sample, cfg, cutoff)}
    info = _calibrate(profile, components, n, sample, cfg, cutoff)
    return DriftReport(overall_status(components, cfg), n, components, calibration=info)


def measure(
    profile: ReferenceProfile, sample: Sample, cfg: DriftConfig, cutoff: float | None
) -> list[ComponentResult]:
    """Every component the sample and the profile allow, graded on the fixed thresholds."""
    results: list[ComponentResult] = []
    if sample.emb is not None:
        results += [cells_drift(profile, sample.emb, cfg), pca_drift(profile, sample.emb, cfg)]
        if sample.classifier:
            results.append(classifier_drift(profile, sample.emb, cfg))
        if cutoff is not None:
            results.append(novelty_drift(profile, sample, cfg, cutoff))
    if sample.lengths is not None:
        results += text_components(profile, sample, cfg)
    if sample.predictions is not None and (profile.predictions or profile.labels):
        results.append(prediction_drift(profile, sample.predictions, cfg))
    if sample.confidences is not None and profile.confidence:
        results.append(confidence_drift(profile, sample.confidences, cfg))
    return results


def _live_sample(
    profile: ReferenceProfile,
    texts: Sequence[str] | None,
    embeddings: np.ndarray | None,
    predictions: Sequence[Any] | None,
    confidences: Sequence[float] | None,
    embedder: TextEmbedder | None,
    cfg: DriftConfig,
) -> Sample:
    sample = _text_sample(profile, list(texts)) if texts is not None else Sample()
    sample.emb = _window_embeddings(profile, texts, embeddings, embedder)
    # Predictions/confidences may cover only part of the window (e.g. classifier routes).
    if _enough(predictions, cfg):
        sample.predictions = list(predictions)
    if _enough(confidences, cfg):
        sample.confidences = check_unit_interval(np.asarray(confidences, dtype=np.float64))
    return sample


def _calibrate(
    profile: ReferenceProfile,
    components: dict[str, ComponentResult],
    n: int,
    sample: Sample,
    cfg: DriftConfig,
    cutoff: float | None,
) -> dict[str, Any]:
    """Raise each component's thresholds to its calibrated ones; the calibration's summary."""
    if not cfg.calibrate:
        return {"calibrated": [], "reason": CALIBRATE_OFF}
    n_conf = len(sample.confidences) if sample.confidences is not None else 0
    cal = null_thresholds(
        profile, list(components), n, cfg, cutoff, len(sample.predictions or ()), n_conf
    )
    return apply_calibration(profile, components, cal)


CALIBRATE_OFF = "calibrate is off: fixed thresholds"


def null_thresholds(
    profile: ReferenceProfile,
    names: Sequence[str],
    n: int,
    cfg: DriftConfig,
    cutoff: float | None,
    n_predictions: int = 0,
    n_confidences: int = 0,
) -> calibration.Calibration:
    """Calibrated thresholds of the components ``names`` (less the ignored) for a window of
    ``n`` texts, nulls measured by the same code as the live window (:func:`measure`)."""
    return calibration.calibrate(
        profile,
        n,
        [c for c in names if c not in cfg.ignore],
        cfg,
        lambda s: {r.name: r.value for r in measure(profile, s, cfg, cutoff)},
        n_predictions,
        n_confidences,
    )


def apply_calibration(
    profile: ReferenceProfile, components: dict[str, ComponentResult], cal: calibration.Calibration
) -> dict[str, Any]:
    """Raise each component's thresholds to ``cal``'s (never below the fixed ones), note its
    null and p-value, regrade it; the calibration's summary."""
    for name, limit in cal.thresholds.items():
        comp = components[name]
        comp.details["null"] = {
            "mean": limit.null_mean,
            "p_value": limit.p_value(comp.value),
            "calibrated_warn": limit.warn,
            "calibrated_alert": limit.alert,
            "fixed_warn": comp.warn,
            "fixed_alert": comp.alert,
        }
        comp.warn, comp.alert = max(comp.warn, limit.warn), max(comp.alert, limit.alert)
        comp.status = grade(comp.value, comp.warn, comp.alert)
    if not calibration.has_sample(profile):
        cal.info["reason"] = (
            "the profile holds no calibration sample (built before calibration, or from "
            "fewer than 40 texts): embedding and text components use fixed thresholds"
        )
    return cal.info


def _no_traffic() -> DriftReport:
    comp = ComponentResult(
        "traffic",
        "requests",
        0.0,
        ALERT,
        None,
        None,
        {"message": "no requests in the window while traffic is expected (expect_traffic)"},
    )
    return DriftReport(ALERT, 0, {"traffic": comp})


def _enough(values: Sequence[Any] | None, cfg: DriftConfig) -> bool:
    return values is not None and len(values) >= cfg.min_window


def overall_status(components: dict[str, ComponentResult], cfg: DriftConfig) -> str:
    counted = [c.status for name, c in components.items() if name not in cfg.ignore]
    if not counted:
        return SKIPPED
    return max(counted, key=lambda s: _SEVERITY.get(s, -1))


def _window_size(texts: Sequence[str] | None, embeddings: np.ndarray | None) -> int:
    if texts is None and embeddings is None:
        raise HonedError("drift check needs texts or embeddings of the window")
    if texts is not None and embeddings is not None and len(texts) != len(embeddings):
        raise HonedError(
            f"drift window: {len(texts)} texts but {len(embeddings)} embeddings (must match)"
        )
    return len(texts) if texts is not None else len(embeddings)


def _window_embeddings(
    profile: ReferenceProfile,
    texts: Sequence[str] | None,
    embeddings: np.ndarray | None,
    embedder: TextEmbedder | None,
) -> np.ndarray | None:
    if embeddings is None:
        if texts is None or embedder is None:
            return None
        embeddings = embedder.encode(list(texts))
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[1] != profile.dim:
        raise HonedError(
            f"window embeddings have shape {emb.shape}; the profile expects (n, {profile.dim}) "
            "(same embedding model as the reference)"
        )
    return emb
