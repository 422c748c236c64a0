"""Reference profile: what the training inputs (and the model's outputs on them) looked like.

Built once when a model is trained, saved next to it, and compared against windows of live
traffic by :mod:`honed.monitor.drift`. Holds:

- embeddings summary: k-means centroids and the share of reference texts per cell; PCA
  (mean, components) with per-component quantile bin edges and a sample of projections; a
  sample of raw embeddings for the domain classifier;
- text statistics: word-length bins, out-of-vocabulary rate against the reference vocabulary,
  language shares (stopword heuristic), character-length quantiles;
- the label distribution, the prediction distribution and confidence histogram on eval data;
- a calibration sample: in-domain texts held out of everything above (their embeddings,
  word counts, out-of-vocabulary counts and languages), from which drift checks draw null
  windows to calibrate their thresholds for the window's size (``honed.monitor.calibration``).

Saved as ``profile.json`` + ``arrays.npz`` (no pickle: loads are safe on untrusted folders).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import Field

from honed.config_base import StrictModel
from honed.errors import HonedError
from honed.evals import textstats

PROFILE_DIRNAME = "reference_profile"  # inside a model folder: <model>/reference_profile/
PROFILE_JSON = "profile.json"
ARRAYS_NPZ = "arrays.npz"
FORMAT_VERSION = 1
CONFIDENCE_EDGES = np.linspace(0.0, 1.0, 11)  # 10 equal bins over [0, 1]
_ARRAY_KEYS = (
    "centroids",
    "cell_shares",
    "pca_mean",
    "pca_components",
    "pca_explained",
    "pca_edges",
    "pca_shares",
    "projections",
    "embedding_sample",
    "length_edges",
)


class TextEmbedder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class ProfileConfig(StrictModel):
    """How much of the reference distribution a profile keeps."""

    n_clusters: int = Field(10, ge=2, le=256, description="k-means cells over embeddings.")
    n_components: int = Field(10, ge=1, le=128, description="PCA components kept.")
    n_bins: int = Field(10, ge=2, le=100, description="Quantile bins per PCA component/length.")
    sample_size: int = Field(
        2000, ge=50, description="Reference embeddings kept for the domain classifier."
    )
    vocab_size: int = Field(20000, ge=100, description="Words kept for the OOV-rate statistic.")
    calibration_size: int = Field(
        500,
        ge=0,
        description="Texts held out of the reference (never used to fit it) from which drift "
        "checks draw in-domain windows to calibrate their thresholds for each window size; at "
        "most a quarter of the texts. 0: none (drift checks fall back to fixed thresholds).",
    )
    seed: int = Field(0, description="Seed of k-means, PCA and sampling.")


class ProfileError(HonedError):
    """A reference profile cannot be built or loaded."""


@dataclass
class ReferenceProfile:
    """See the module docstring. Arrays: centroids (k, d), cell_shares (k,), pca_mean (d,),
    pca_components (c, d), pca_explained (c,), pca_edges (c, n_bins - 1) interior quantile
    edges, pca_shares (c, n_bins) reference share per bin, projections (m, c),
    embedding_sample (m, d) float16, length_edges (n_bins - 1,); optionally the calibration
    sample (h held-out texts): calibration_embeddings (h, d) float16, calibration_words (h,),
    calibration_unknown (h,) out-of-vocabulary words, calibration_languages (h,)."""

    arrays: dict[str, np.ndarray]
    text: dict[str, Any]
    labels: dict[str, float] | None = None
    predictions: dict[str, float] | None = None
    confidence: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # Where it was saved / loaded from (drift calibration caches its null draws there).
    folder: Path | None = None

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    @property
    def dim(self) -> int:
        return int(self.arrays["centroids"].shape[1])

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / ARRAYS_NPZ, **self.arrays)
        doc = {
            "format_version": FORMAT_VERSION,
            "meta": self.meta,
            "text": self.text,
            "labels": self.labels,
            "predictions": self.predictions,
            "confidence": self.confidence,
        }
        (folder / PROFILE_JSON).write_text(json.dumps(doc, indent=2), encoding="utf-8")
        self.folder = folder
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ReferenceProfile:
        folder = Path(folder)
        doc_path, npz_path = folder / PROFILE_JSON, folder / ARRAYS_NPZ
        if not doc_path.is_file() or not npz_path.is_file():
            raise ProfileError(f"{folder}: no reference profile ({PROFILE_JSON} + {ARRAYS_NPZ})")
        try:
            doc = json.loads(doc_path.read_text(encoding="utf-8"))
            with np.load(npz_path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (ValueError, OSError) as err:
            raise ProfileError(f"{folder}: unreadable reference profile: {err}") from None
        if doc.get("format_version") != FORMAT_VERSION:
            raise ProfileError(f"{folder}: profile format {doc.get('format_version')} unknown")
        missing = [k for k in _ARRAY_KEYS if k not in arrays]
        if missing:
            raise ProfileError(f"{doc_path}: arrays missing from {ARRAYS_NPZ}: {missing}")
        return cls(
            arrays=arrays,
            text=doc["text"],
            labels=doc.get("labels"),
            predictions=doc.get("predictions"),
            confidence=doc.get("confidence"),
            meta=doc.get("meta", {}),
            folder=folder,
        )


def shares(values: Sequence[Any]) -> dict[str, float]:
    """Category -> share of ``values``."""
    counts = Counter(str(v) for v in values)
    n = max(len(values), 1)
    return {k: c / n for k, c in sorted(counts.items())}


def bin_shares(values: np.ndarray, interior_edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` per bin given interior edges (n_bins - 1,) -> (n_bins,)."""
    idx = np.searchsorted(interior_edges, values, side="right")
    counts = np.bincount(idx, minlength=len(interior_edges) + 1)
    return counts / max(len(values), 1)


def confidence_summary(confidences: Sequence[float]) -> dict[str, Any]:
    conf = check_unit_interval(np.asarray(confidences, dtype=np.float64))
    hist = np.histogram(conf, bins=CONFIDENCE_EDGES)[0] / max(len(conf), 1)
    return {
        "mean": float(conf.mean()) if len(conf) else 0.0,
        # n and sd size the null of a window's mean confidence (drift calibration)
        "n": len(conf),
        "sd": float(conf.std()) if len(conf) else 0.0,
        "quantiles": {str(q): float(np.quantile(conf, q)) for q in (0.05, 0.25, 0.5)}
        if len(conf)
        else {},
        "hist": hist.tolist(),
        "edges": CONFIDENCE_EDGES.tolist(),
    }


def check_unit_interval(conf: np.ndarray) -> np.ndarray:
    if conf.ndim != 1 or (len(conf) and (np.nanmin(conf) < 0 or np.nanmax(conf) > 1)):
        raise ProfileError("confidences must be a flat sequence of numbers in [0, 1]")
    return conf[~np.isnan(conf)]


def _quantile_edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Interior quantile edges (n_bins - 1,), de-duplicated so each bin is non-empty-able."""
    qs = np.linspace(0, 1, n_bins + 1)[1:-1]
    return np.unique(np.quantile(values, qs))


def embedding_summary(emb: np.ndarray, cfg: ProfileConfig) -> dict[str, np.ndarray]:
    """k-means cells, PCA and samples of ``emb`` (n, d)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_limits

    n, dim = emb.shape
    rng = np.random.default_rng(cfg.seed)
    k = min(cfg.n_clusters, n)
    fit_rows = emb[rng.choice(n, min(n, 20000), replace=False)]  # bounded fit cost
    # One OpenMP thread: k-means on a few thousand rows finishes in ~0.2 s that way, while
    # a thread team on a busy machine spins for seconds (measured 0.18 s vs 2.1 s).
    with threadpool_limits(limits=1, user_api="openmp"):
        km = KMeans(n_clusters=k, n_init=3, random_state=cfg.seed).fit(fit_rows)
        cells = km.predict(emb)
    c = min(cfg.n_components, n, dim)
    pca = PCA(n_components=c, random_state=cfg.seed).fit(fit_rows)
    proj = pca.transform(emb)  # (n, c)
    # Edges per component; pad with +inf so every component has n_bins - 1 entries (an inf
    # edge only creates an always-empty bin on both sides, which PSI ignores via smoothing).
    edges = np.full((c, cfg.n_bins - 1), np.inf)
    for j in range(c):
        e = _quantile_edges(proj[:, j], cfg.n_bins)
        edges[j, : len(e)] = e
    pca_shares = np.stack([bin_shares(proj[:, j], edges[j]) for j in range(c)])  # (c, n_bins)
    sample = rng.choice(n, min(n, cfg.sample_size), replace=False)
    return {
        "centroids": km.cluster_centers_.astype(np.float32),
        "cell_shares": np.bincount(cells, minlength=k) / n,
        "pca_mean": pca.mean_.astype(np.float32),
        "pca_components": pca.components_.astype(np.float32),
        "pca_explained": pca.explained_variance_ratio_.astype(np.float32),
        "pca_edges": edges,
        "pca_shares": pca_shares,
        "projections": proj[sample].astype(np.float32),
        "embedding_sample": emb[sample].astype(np.float16),
    }


def text_summary(texts: Sequence[str], cfg: ProfileConfig) -> tuple[dict[str, Any], np.ndarray]:
    """Text statistics and the word-length bin edges."""
    lengths = textstats.word_lengths(texts)
    length_edges = _quantile_edges(lengths, cfg.n_bins)
    # OOV rate measured honestly: vocabulary from one half, rate on the other half (on the
    # texts the vocabulary came from it would be 0 and every window would look "drifted").
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(texts))
    half = max(len(texts) // 2, 1)
    held_out = [texts[i] for i in order[half:]] or list(texts)
    vocab_half = textstats.build_vocab((texts[i] for i in order[:half]), cfg.vocab_size)
    chars = np.array([len(t) for t in texts], dtype=np.float64)
    summary = {
        "n": len(texts),
        "length_shares": bin_shares(lengths, length_edges).tolist(),
        "mean_words": float(lengths.mean()),
        "char_quantiles": {
            str(q): float(np.quantile(chars, q)) for q in (0.01, 0.05, 0.5, 0.95, 0.99)
        },
        "oov_rate": textstats.oov_rate(held_out, frozenset(vocab_half)),
        "vocab": vocab_half,
        "languages": textstats.language_shares(texts),
    }
    return summary, length_edges


def build_reference_profile(
    texts: Sequence[str],
    labels: Sequence[Any] | None = None,
    predictions: Sequence[Any] | None = None,
    confidences: Sequence[float] | None = None,
    embedder: TextEmbedder | None = None,
    *,
    embeddings: np.ndarray | None = None,
    config: ProfileConfig | None = None,
) -> ReferenceProfile:
    """Profile the reference texts (training inputs). ``predictions``/``confidences`` are the
    model's outputs on eval data. Embeddings come from ``embeddings`` (n, d) when given, else
    ``embedder.encode(texts)`` (default: the packaged all-MiniLM-L6-v2)."""
    cfg = config or ProfileConfig()
    texts = list(texts)
    if len(texts) < 2:
        raise ProfileError(f"a reference profile needs at least 2 texts, got {len(texts)}")
    if not all(isinstance(t, str) for t in texts):
        raise ProfileError("reference texts must all be strings")
    emb = _embeddings(texts, embedder, embeddings)
    fit, held = _calibration_split(len(texts), cfg)
    fit_texts = [texts[i] for i in fit]
    arrays = embedding_summary(emb[fit], cfg)
    text, length_edges = text_summary(fit_texts, cfg)
    arrays["length_edges"] = length_edges
    if len(held):
        arrays.update(calibration_sample([texts[i] for i in held], emb[held], text["vocab"]))
    return ReferenceProfile(
        arrays=arrays,
        text=text,
        labels=shares(labels) if labels is not None else None,
        predictions=shares(predictions) if predictions is not None else None,
        confidence=confidence_summary(confidences) if confidences is not None else None,
        meta={
            "n": len(texts),
            "calibration_n": len(held),
            "predictions_n": len(predictions) if predictions is not None else None,
            "dim": int(emb.shape[1]),
            "embedder": getattr(embedder, "name", type(embedder).__name__) if embedder else None,
            "config": cfg.model_dump(),
            "created_at": datetime.now(UTC).isoformat(),
        },
    )


def _calibration_split(n: int, cfg: ProfileConfig) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (fit, held out): at most a quarter of the rows are held out, none when
    fewer than 40 rows (the reference needs them more than the calibration does)."""
    held = min(cfg.calibration_size, n // 4) if n >= 40 else 0
    order = np.random.default_rng(cfg.seed + 1).permutation(n)
    return np.sort(order[held:]), np.sort(order[:held])


def calibration_sample(
    texts: Sequence[str], emb: np.ndarray, vocab: Sequence[str]
) -> dict[str, np.ndarray]:
    """Per held-out text what a drift check measures on a window: embedding, words, words
    out of the reference vocabulary, language (index into ``textstats.LANGUAGES``)."""
    known = frozenset(vocab)
    tokens = [textstats.words(t) for t in texts]
    languages = [
        textstats.LANGUAGES.index(textstats.guess_language(t, w))
        for t, w in zip(texts, tokens, strict=True)
    ]
    return {
        "calibration_embeddings": emb.astype(np.float16),
        "calibration_words": np.array([len(w) for w in tokens], dtype=np.int32),
        "calibration_unknown": np.array(
            [sum(x not in known for x in w) for w in tokens], dtype=np.int32
        ),
        "calibration_languages": np.array(languages, dtype=np.int16),
    }


def _embeddings(
    texts: list[str], embedder: TextEmbedder | None, embeddings: np.ndarray | None
) -> np.ndarray:
    if embeddings is None:
        if embedder is None:
            from honed.models.embed import Embedder

            embedder = Embedder.packaged()
        embeddings = embedder.encode(texts)
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(texts):
        raise ProfileError(f"embeddings must have shape ({len(texts)}, dim), got {emb.shape}")
    if not np.isfinite(emb).all():
        raise ProfileError("embeddings contain NaN or infinite values")
    return emb


_TEXT_FIELDS = ("text", "prompt", "instruction", "input", "question")


def write_run_profile(
    model_dir: str | Path,
    train_rows: Sequence[dict[str, Any]],
    predictions: Sequence[Any] | None = None,
    confidences: Sequence[float] | None = None,
    embedder: TextEmbedder | None = None,
    max_texts: int = 2000,
    seed: int = 0,
) -> Path:
    """Build the reference profile of a training run and save it as
    ``<model_dir>/reference_profile``. ``train_rows``: the training split's dicts (input text
    in ``text``, ``prompt``, ``instruction``, ``input`` or ``question``; ``label`` if any),
    subsampled to ``max_texts`` to bound the embedding cost. ``predictions`` /
    ``confidences``: the model's outputs on the eval split."""
    field = next((f for f in _TEXT_FIELDS if train_rows and f in train_rows[0]), None)
    if field is None:
        raise ProfileError(f"training rows have none of the text fields {_TEXT_FIELDS}")
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(train_rows))[:max_texts]
    rows = [train_rows[i] for i in sorted(idx)]
    labels = [r["label"] for r in rows] if "label" in rows[0] else None
    profile = build_reference_profile(
        [str(r[field]) for r in rows],
        labels=labels,
        predictions=predictions,
        confidences=confidences,
        embedder=embedder,
        config=ProfileConfig(seed=seed),
    )
    return profile.save(Path(model_dir) / PROFILE_DIRNAME)
