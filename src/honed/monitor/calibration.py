"""Drift thresholds calibrated for the window's size.

A drift statistic on a small window is noisy: the PSI of 50 in-domain texts over 10 bins
averages about 9 / 50 = 0.18 by chance alone, and a domain classifier trained on 50 + 50 rows
reaches an AUC of 0.6 often enough. Fixed thresholds therefore alarm on small windows and
miss on large ones. Here each component's threshold comes from its null distribution at the
window's size:

- The null comes from the profile's calibration sample: in-domain texts held out of the
  reference when it was built (:func:`honed.evals.profile.calibration_sample`).
- Share statistics (k-means cells, word-length bins, languages, novel or not; predicted
  labels against the reference's shares) are multinomial: 100,000 windows' counts are drawn
  directly (shares ~ Dirichlet(held-out counts + 1/2), so the sample's own noise counts) and
  the threshold is read off them empirically: their tails are lumpy (an empty cell adds
  ~0.3 to a small window's PSI) and a fitted curve under-reads them.
- The others (PCA PSI, domain-classifier AUC, OOV rise) are measured on windows drawn with
  replacement (bootstrap) from the held-out texts by the same code as the live window (the
  caller passes it in as ``measure``); the confidence drop on normal draws with the reference's
  sd, sized ``1 / (1/n + 1/m)`` for a window of n and a reference of m. A tail is fitted to
  those draws (gamma for PCA PSI; normal for the AUC, OOV rise and confidence drop) and read at
  ``rate * share`` (weighted Bonferroni: the shares of the K components sum to 1; novelty, the
  detector of a mix of other texts, gets ``novelty_rate_share``, the others split the rest):
  the chance that *any* component of an in-domain window alerts is at most
  ``false_alarm_rate``, however the components correlate. The
  threshold is never below the largest null draw.
- Sizes are rounded down to a grid (``min_window * 2**(k/2)``): windows of similar size share
  one null (cached on the profile object), and the rounding errs towards higher thresholds.
  Windows larger than the calibration sample use the null at the sample's size, scaled
  (PSI ~ 1/n; AUC, OOV and share deviations and total variation ~ 1/sqrt(n)).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from honed.evals import textstats
from honed.evals.profile import ReferenceProfile
from honed.monitor.config import DriftConfig


@dataclass
class Sample:
    """What the components measure on one window (live or null); None: not measured."""

    emb: np.ndarray | None = None
    lengths: np.ndarray | None = None  # words per text (n,)
    oov_rate: float | None = None
    languages: dict[str, float] | None = None
    predictions: Sequence[Any] | None = None
    confidences: np.ndarray | None = None
    classifier: bool = True  # fit the domain classifier (the one costly component)
    novel: np.ndarray | None = None  # per row: novel or not, when known already (null)


Measure = Callable[[Sample], dict[str, float]]

# bootstrapped / simulated component -> (tail, how its null scales from the calibration size
# to a larger window); the share statistics (COUNT_BASED) are drawn at the window's size.
TAILS: dict[str, tuple[str, str]] = {
    "embedding_cells": ("gamma", "inverse"),
    "embedding_pca": ("gamma", "inverse"),
    "domain_classifier": ("normal", "sqrt"),
    "novelty": ("gamma", "sqrt"),
    "text_length": ("gamma", "inverse"),
    "oov_rate": ("normal", "sqrt"),
    "language": ("gamma", "sqrt_value"),
    "predictions": ("gamma", "none"),
    "confidence": ("normal", "none"),
}
_BOOTSTRAPPED = ("embedding_pca", "domain_classifier", "oov_rate")
_TEXT = ("oov_rate",)


# Statistics of shares of categories (cells, length bins, languages, novel or not, labels):
# a window's counts are a multinomial draw, so their null is drawn directly, hundreds of
# thousands of times, and read off empirically: their tails are too lumpy for a fitted curve
# (one empty cell adds ~0.3 to a small window's PSI; a gamma fit under-reads the 1e-4 tail).
COUNT_BASED = ("embedding_cells", "text_length", "language", "novelty", "predictions")
COUNT_DRAWS = 100_000


@dataclass
class Threshold:
    """Calibrated warn / alert levels of one component and its null, for p-values."""

    warn: float
    alert: float
    tail: str
    params: tuple[float, float]  # gamma (shape, scale) or normal (mean, sd)
    null_mean: float
    draws: np.ndarray | None = None  # sorted null draws (empirical tail)

    def p_value(self, value: float) -> float:
        from scipy import stats

        if self.draws is not None:
            above = len(self.draws) - np.searchsorted(self.draws, value, side="left")
            return float((above + 1) / (len(self.draws) + 1))
        a, b = self.params
        if b <= 0:
            return 0.0 if value > self.null_mean else 1.0
        dist = stats.gamma(a, scale=b) if self.tail == "gamma" else stats.norm(a, b)
        return float(dist.sf(value))


@dataclass
class Calibration:
    thresholds: dict[str, Threshold] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def has_sample(profile: ReferenceProfile) -> bool:
    return "calibration_embeddings" in profile.arrays and len(profile.calibration_embeddings) > 1


def _cache(profile: ReferenceProfile) -> dict:
    return profile.__dict__.setdefault("_calibration_cache", {})


# Neighbours averaged by max_similarity: on PhraseBank vs Alpaca (MiniLM), 10 make 88% of
# Alpaca texts novel at the 5% in-domain cutoff, against 83% with the single nearest.
NEIGHBOURS = 10


def max_similarity(profile: ReferenceProfile, emb: np.ndarray) -> np.ndarray:
    """Mean cosine similarity of each row of ``emb`` (n, d) to its ``NEIGHBOURS`` nearest
    reference sample rows (n,)."""
    cache = _cache(profile)
    if "unit_sample" not in cache:
        cache["unit_sample"] = _unit(profile.embedding_sample.astype(np.float32))
    ref = cache["unit_sample"]
    k = min(NEIGHBOURS, len(ref))
    out = np.empty(len(emb), dtype=np.float32)
    for start in range(0, len(emb), 4096):  # bounded (4096, m) blocks on large windows
        block = _unit(np.asarray(emb[start : start + 4096], dtype=np.float32))
        sims = block @ ref.T
        out[start : start + 4096] = np.partition(sims, -k, axis=1)[:, -k:].mean(1)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def novelty_cutoff(profile: ReferenceProfile, quantile: float) -> float | None:
    """Similarity below which a text counts as novel: the ``quantile`` of the held-out
    texts' nearest-reference similarities (so about that share of in-domain texts is novel).
    None without a calibration sample."""
    if not has_sample(profile):
        return None
    return float(np.quantile(_pool(profile)["similarity"], quantile))


def _cross_fitted_novelty(similarity: np.ndarray, quantile: float) -> np.ndarray:
    """Novel flags of the pool rows, each judged by the cutoff of the *other* half: a cutoff
    read off the same rows would make exactly ``quantile`` of them novel, fewer than of new
    in-domain texts (measured on PhraseBank: 5% in the pool, 7% of unseen sentences)."""
    halves = np.arange(len(similarity)) % 2
    novel = np.zeros(len(similarity), dtype=bool)
    for half in (0, 1):
        cutoff = np.quantile(similarity[halves != half], quantile)
        novel[halves == half] = similarity[halves == half] < cutoff
    return novel


def null_size(n: int, cfg: DriftConfig) -> int:
    """``n`` rounded down to the grid ``min_window * 2**(k/2)``."""
    k = math.floor(2 * math.log2(max(n, cfg.min_window) / cfg.min_window) + 1e-9)
    return max(cfg.min_window, int(cfg.min_window * 2 ** (k / 2)))


def calibrate(
    profile: ReferenceProfile,
    n: int,
    components: Sequence[str],
    cfg: DriftConfig,
    measure: Measure,
    n_predictions: int = 0,
    n_confidences: int = 0,
) -> Calibration:
    """Thresholds for ``components`` (those measured on the live window, less the ignored)
    on a window of ``n`` texts (``n_predictions`` / ``n_confidences`` of them with outputs)."""
    k = max(len(components), 1)
    info: dict[str, Any] = {
        "method": "null windows from held-out reference texts: share statistics drawn as a "
        "Dirichlet-multinomial (empirical tail), the others bootstrapped (gamma/normal tail); "
        "weighted Bonferroni over components",
        "false_alarm_rate": cfg.false_alarm_rate,
        "warn_rate": cfg.warn_rate,
        "components": k,
        "draws": cfg.calibration_draws,
        "classifier_draws": min(cfg.classifier_draws, cfg.calibration_draws),
    }
    share = _alpha_shares(components, cfg)
    sizes = {"predictions": n_predictions}
    thresholds: dict[str, Threshold] = {}
    for c in components:
        counted = _count_null(profile, c, sizes.get(c, n), cfg)
        if counted is not None:
            thresholds[c] = _empirical(
                counted, cfg.warn_rate * share[c], cfg.false_alarm_rate * share[c]
            )
    fitted: dict[str, np.ndarray] = {}
    sampled = [c for c in components if c in _BOOTSTRAPPED]
    if sampled and has_sample(profile):
        grid = null_size(n, cfg)
        pool = len(profile.calibration_embeddings)
        size = min(grid, pool)
        raw = _bootstrap_null(profile, size, tuple(sampled), cfg, measure)
        fitted.update({c: _scale(raw[c], TAILS[c][1], size / grid) for c in sampled if c in raw})
        info.update(null_window=grid, drawn_at=size, pool=pool)
    fitted.update(_simulated_null(profile, components, cfg, measure, n_confidences))
    for c, values in fitted.items():
        thresholds[c] = _threshold(
            values, TAILS[c][0], cfg.warn_rate * share[c], cfg.false_alarm_rate * share[c]
        )
    info["alpha_share"] = share
    info["calibrated"] = sorted(thresholds)
    return Calibration(thresholds, info)


def _alpha_shares(components: Sequence[str], cfg: DriftConfig) -> dict[str, float]:
    """Each component's share of the family's false-alarm rate (weighted Bonferroni: the
    shares sum to 1): ``novelty_rate_share`` to novelty, the rest split evenly."""
    if "novelty" not in components or len(components) == 1:
        return dict.fromkeys(components, 1 / max(len(components), 1))
    rest = (1 - cfg.novelty_rate_share) / (len(components) - 1)
    return {c: cfg.novelty_rate_share if c == "novelty" else rest for c in components}


def _bootstrap_null(
    profile: ReferenceProfile,
    size: int,
    components: tuple[str, ...],
    cfg: DriftConfig,
    measure: Measure,
) -> dict[str, np.ndarray]:
    key = ("bootstrap", size, components, cfg.calibration_draws, cfg.classifier_draws)
    key += _measure_key(cfg)
    cache = _cache(profile)
    if key not in cache:
        cache[key] = _read_disk(profile, key, components)
    if cache[key] is None:
        rng = np.random.default_rng([cfg.seed, size])
        pool = _pool(profile)
        wants_text = any(c in _TEXT for c in components)
        rows = []
        for i in range(cfg.calibration_draws):
            idx = rng.integers(0, len(pool["emb"]), size)
            sample = _pool_sample(profile, pool, idx, wants_text)
            sample.classifier = i < cfg.classifier_draws
            rows.append(measure(sample))
        cache[key] = {c: np.array([r[c] for r in rows if c in r]) for c in components}
        _write_disk(profile, key, cache[key])
    return cache[key]


# Bootstrapped nulls are kept beside a saved profile (``<profile>/calibration_cache/``), so
# the hourly `honed monitor drift` fits its null classifiers once per window size, not per run.
CACHE_DIRNAME = "calibration_cache"


def _disk_path(profile: ReferenceProfile, key: tuple):
    import hashlib

    if profile.folder is None:
        return None
    # created_at: a profile rebuilt into the same folder never reads the old one's draws
    stamp = (profile.meta.get("created_at"), profile.meta.get("calibration_n"))
    digest = hashlib.sha256(repr((stamp, key)).encode()).hexdigest()[:20]
    return profile.folder / CACHE_DIRNAME / f"{digest}.npz"


def _read_disk(profile: ReferenceProfile, key: tuple, components: tuple[str, ...]):
    path = _disk_path(profile, key)
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            found = {c: npz[c] for c in npz.files}
    except (OSError, ValueError):  # a torn or foreign file: recompute
        return None
    return found if set(found) == set(components) else None


def _write_disk(profile: ReferenceProfile, key: tuple, draws: dict[str, np.ndarray]) -> None:
    path = _disk_path(profile, key)
    if path is None:
        return
    try:
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **draws)
        tmp.replace(path)  # atomic: a concurrent check reads the old file or the new one
    except OSError:  # a read-only model folder: the in-memory cache still serves this run
        pass


def _measure_key(cfg: DriftConfig) -> tuple:
    # The settings that change what a component measures (not its thresholds).
    return (
        cfg.epsilon,
        cfg.classifier_max_samples,
        cfg.cv_folds,
        cfg.classifier_c,
        cfg.novelty_quantile,
        cfg.seed,
    )


def _pool(profile: ReferenceProfile) -> dict[str, np.ndarray]:
    cache = _cache(profile)
    if "pool" not in cache:
        cache["pool"] = {
            "emb": profile.calibration_embeddings.astype(np.float32),
            "words": profile.calibration_words.astype(np.float64),
            "unknown": profile.calibration_unknown.astype(np.float64),
            "languages": profile.calibration_languages.astype(np.int64),
        }
        cache["pool"]["similarity"] = max_similarity(profile, cache["pool"]["emb"])
    return cache["pool"]


def _pool_sample(
    profile: ReferenceProfile, pool: dict[str, np.ndarray], idx: np.ndarray, text: bool
) -> Sample:
    skip = np.zeros(len(idx), dtype=bool)  # novelty's null is drawn apart (_count_null)
    if not text:
        return Sample(emb=pool["emb"][idx], novel=skip)
    words, unknown = pool["words"][idx], pool["unknown"][idx]
    counts = np.bincount(pool["languages"][idx], minlength=len(textstats.LANGUAGES))
    return Sample(
        emb=pool["emb"][idx],
        novel=skip,
        lengths=words,
        oov_rate=float(unknown.sum() / words.sum()) if words.sum() else 0.0,
        languages={lang: c / len(idx) for lang, c in zip(textstats.LANGUAGES, counts, strict=True)},
    )


def _simulated_null(
    profile: ReferenceProfile,
    components: Sequence[str],
    cfg: DriftConfig,
    measure: Measure,
    n_confidences: int,
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    rng = np.random.default_rng([cfg.seed, n_confidences])
    if "confidence" in components and profile.confidence and n_confidences:
        ref = profile.confidence
        size = _effective(n_confidences, ref.get("n"))
        sd = ref.get("sd", _hist_sd(ref))
        means = ref["mean"] + sd * rng.standard_normal((cfg.calibration_draws, size))
        out["confidence"] = np.array([measure(Sample(confidences=m))["confidence"] for m in means])
    return out


def _count_null(
    profile: ReferenceProfile, component: str, n: int, cfg: DriftConfig
) -> np.ndarray | None:
    """Sorted null draws of a share statistic on a window of ``n``: counts ~ Multinomial(n,
    p), p ~ Dirichlet(the pool's counts + 1/2) (the pool's own sampling noise included), for
    the held-out pool's categories; for predictions, the reference's shares and size."""
    if component not in COUNT_BASED or n < 1:
        return None
    key = ("counts", component, n, cfg.epsilon, cfg.novelty_quantile, cfg.seed)
    cache = _cache(profile)
    if key not in cache:
        found = _categories(profile, component, cfg)
        if found is None:
            return None
        reference, counts = found
        rng = np.random.default_rng([cfg.seed, n, COUNT_BASED.index(component)])
        stat = _tvd if component == "language" else _share if component == "novelty" else _psi
        eps = max(cfg.epsilon, 0.5 / n)
        parts = []
        for _ in range(COUNT_DRAWS // 50_000):
            parts.append(stat(reference, _dirichlet_multinomial(rng, counts, n) / n, eps))
        cache[key] = np.sort(np.concatenate(parts))
    return cache[key]


def _categories(profile: ReferenceProfile, component: str, cfg: DriftConfig):
    """(reference shares, counts the null draws from) of a share statistic, or None."""
    if component == "predictions":
        reference = profile.predictions or profile.labels
        if not reference:
            return None
        shares = np.array(list(reference.values()), dtype=np.float64)
        m = profile.meta.get("predictions_n") or 100_000  # unknown: a precise reference
        return shares, shares * m
    if not has_sample(profile):
        return None
    pool = _pool(profile)
    if component == "novelty":
        novel = _cross_fitted_novelty(pool["similarity"], cfg.novelty_quantile)
        return np.array([0.0, 1.0]), np.bincount(novel.astype(int), minlength=2).astype(float)
    if component == "language":
        k = len(textstats.LANGUAGES)
        ref = np.array([profile.text["languages"].get(x, 0.0) for x in textstats.LANGUAGES])
        return ref, np.bincount(pool["languages"], minlength=k).astype(float)
    if component == "embedding_cells":
        centroids = profile.centroids.astype(np.float32)
        cells = (-2.0 * pool["emb"] @ centroids.T + (centroids**2).sum(1)).argmin(1)
        return profile.cell_shares, np.bincount(cells, minlength=len(centroids)).astype(float)
    edges = profile.length_edges  # text_length
    bins = np.searchsorted(edges, pool["words"], side="right")
    ref = np.asarray(profile.text["length_shares"], dtype=np.float64)
    return ref, np.bincount(bins, minlength=len(edges) + 1).astype(float)


def _dirichlet_multinomial(rng: np.random.Generator, counts: np.ndarray, n: int) -> np.ndarray:
    """(50,000, k) window counts: shares ~ Dirichlet(counts + 1/2), then Multinomial(n) as
    conditional binomials (4x faster than ``Generator.multinomial`` with per-row shares)."""
    g = rng.standard_gamma(counts + 0.5, size=(50_000, len(counts)))
    p = g / g.sum(1, keepdims=True)
    out = np.zeros_like(p, dtype=np.int64)
    left = np.full(len(p), n, dtype=np.int64)
    rest = np.ones(len(p))
    for j in range(len(counts) - 1):
        out[:, j] = rng.binomial(left, np.clip(p[:, j] / np.maximum(rest, 1e-12), 0, 1))
        left -= out[:, j]
        rest -= p[:, j]
    out[:, -1] = left
    return out


def _psi(reference: np.ndarray, window: np.ndarray, eps: float) -> np.ndarray:
    """PSI of each row of ``window`` (d, k) against ``reference`` (k,), as drift.psi."""
    r = np.clip(reference, eps, None)
    r = r / r.sum()
    w = np.clip(window, eps, None)
    w = w / w.sum(1, keepdims=True)
    return ((w - r) * np.log(w / r)).sum(1)


def _tvd(reference: np.ndarray, window: np.ndarray, _eps: float) -> np.ndarray:
    return 0.5 * np.abs(window - reference).sum(1)


def _share(_reference: np.ndarray, window: np.ndarray, _eps: float) -> np.ndarray:
    return window[:, 1]  # share of novel rows


def _empirical(draws: np.ndarray, warn_alpha: float, alert_alpha: float) -> Threshold:
    warn, alert = np.quantile(draws, [1 - warn_alpha, 1 - alert_alpha])
    mean = float(draws.mean())
    return Threshold(float(warn), float(alert), "empirical", (mean, 0.0), mean, draws)


def _effective(n: int, m: int | None) -> int:
    """Window size whose sampling noise equals that of the window (n) and the reference (m)
    together (the variance of a difference of two shares adds up)."""
    return max(2, round(1 / (1 / n + 1 / m))) if m else n


def _hist_sd(summary: dict[str, Any]) -> float:
    """Sd of confidences from the histogram (profiles written before ``sd`` was stored)."""
    edges, hist = np.asarray(summary["edges"]), np.asarray(summary["hist"])
    mid = (edges[:-1] + edges[1:]) / 2
    mean = float((mid * hist).sum())
    return float(np.sqrt(max((hist * (mid - mean) ** 2).sum(), 0.0)))


def _scale(values: np.ndarray, how: str, ratio: float) -> np.ndarray:
    """Null draws at size s -> at size s / ratio (ratio <= 1)."""
    if ratio >= 1 or how == "none":
        return values
    if how == "inverse":
        return values * ratio
    if how == "sqrt_value":
        return values * math.sqrt(ratio)
    center = values.mean()
    return center + (values - center) * math.sqrt(ratio)


def _threshold(values: np.ndarray, tail: str, warn_alpha: float, alert_alpha: float):
    from scipy import stats

    values = values[np.isfinite(values)]
    mean, sd = float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
    top = float(values.max())
    if sd <= 1e-12:
        return Threshold(top, top, tail, (mean, 0.0), mean)
    if tail == "gamma" and mean > 0:
        shape, scale = mean**2 / sd**2, sd**2 / mean
        warn, alert = stats.gamma.isf([warn_alpha, alert_alpha], shape, scale=scale)
        params = (shape, scale)
    else:
        tail = "normal"
        warn, alert = stats.norm.isf([warn_alpha, alert_alpha], mean, sd)
        params = (mean, sd)
    return Threshold(max(float(warn), top), max(float(alert), top), tail, params, mean)
