"""Cost of a drift check over 100,000 logged requests.

    .venv/bin/python bench/drift_cost.py [--requests 100000] [--db URL]

Synthetic traffic (the cost does not depend on what the texts say): 384-d unit embeddings
(as all-MiniLM-L6-v2 gives) from a Gaussian mixture, short English-like texts, labels and
scores. The requests go through the RequestLogger into SQLite (default, a temporary file) with
their embeddings cached as the drift check leaves them; the timed check then reads the window
from the database and runs every component (cells, PCA, domain classifier, text stats,
predictions, confidence).

Baselines in the same run:
  * the same check if embeddings were not cached: measured MiniLM encode rate on 256 texts,
    extrapolated to the window (ratio = check time / that time);
  * Evidently's embedding drift (model method) when ``evidently`` imports (a bench extra; not
    installed by default: printed as skipped).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = (  # noqa: SIM905 (a word list reads better as one string)
    "the company said net sales rose fell profit quarter year operating bank shares "
    "market growth loss million euro from to in of and for by with percent period compared"
).split()
DIM = 384


def synthetic(n: int, rng: np.random.Generator, centers: np.ndarray):
    """n texts, embeddings (n, 384) float32 unit vectors, labels, scores."""
    which = rng.integers(len(centers), size=n)
    emb = centers[which] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    lengths = rng.integers(6, 30, size=n)
    texts = [" ".join(rng.choice(WORDS, size=k)) for k in lengths]
    labels = rng.choice(["positive", "neutral", "negative"], size=n, p=[0.3, 0.55, 0.15])
    scores = rng.uniform(0.5, 1.0, size=n)
    return texts, emb, labels.tolist(), scores.tolist()


def fill_log(url: str, n: int, rng, centers) -> float:
    from honed.monitor.requestlog import RequestLogger

    texts, emb, labels, scores = synthetic(n, rng, centers)
    half = emb.astype(np.float16)
    logger = RequestLogger(url, queue_size=n + 1, batch_size=2000, flush_interval_s=0.2)
    start = time.perf_counter()
    for i in range(n):
        logger.submit(
            {
                "input_text": texts[i],
                "output_text": labels[i],
                "predicted_label": labels[i],
                "score": scores[i],
                "latency_ms": 12.0,
                "status_code": 200,
                "model": "bench",
                "embedding": half[i].tobytes(),
            }
        )
    logger.close(timeout=600)
    elapsed = time.perf_counter() - start
    assert logger.stats.written == n, logger.stats
    return elapsed


def encode_rate() -> float | None:
    """Texts per second of the packaged MiniLM here (None when it is not installed)."""
    try:
        from honed.models.embed import Embedder

        embedder = Embedder.packaged()
    except Exception as err:  # the packaged model is optional for this bench
        print(f"MiniLM not available ({err}): no-cache baseline skipped")
        return None
    texts = [" ".join(WORDS[i % 7 : i % 7 + 12]) for i in range(256)]
    embedder.encode(texts[:16])  # warm-up
    start = time.perf_counter()
    embedder.encode(texts)
    return len(texts) / (time.perf_counter() - start)


def evidently_seconds(ref: np.ndarray, cur: np.ndarray) -> float | None:
    try:
        import evidently  # noqa: F401
    except ImportError:
        print("evidently not installed: skipped")
        return None
    try:  # legacy (<0.7) API: Report + EmbeddingsDriftMetric with the model method
        import pandas as pd
        from evidently import ColumnMapping
        from evidently.metrics import EmbeddingsDriftMetric
        from evidently.metrics.data_drift.embedding_drift_methods import model
        from evidently.report import Report

        cols = [f"e{i}" for i in range(ref.shape[1])]
        mapping = ColumnMapping(embeddings={"emb": cols})
        start = time.perf_counter()
        report = Report(metrics=[EmbeddingsDriftMetric("emb", drift_method=model())])
        report.run(
            reference_data=pd.DataFrame(ref, columns=cols),
            current_data=pd.DataFrame(cur, columns=cols),
            column_mapping=mapping,
        )
        return time.perf_counter() - start
    except Exception as err:
        print(f"evidently installed but its embedding-drift API failed ({err}): skipped")
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--db", help="Database URL (default: SQLite in a temporary folder).")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(2)
    from honed.monitor.profile import build_reference_profile
    from honed.monitor.requestlog import RequestStore
    from honed.monitor.window import drift_for_window, load_window

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((12, DIM)).astype(np.float32)
    ref_texts, ref_emb, ref_labels, ref_scores = synthetic(5000, rng, centers)
    start = time.perf_counter()
    profile = build_reference_profile(
        ref_texts,
        labels=ref_labels,
        predictions=ref_labels,
        confidences=ref_scores,
        embeddings=ref_emb,
    )
    print(f"reference profile of 5,000 texts built in {time.perf_counter() - start:.1f}s")
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite:///{Path(tmp) / 'requests.db'}"
        fill = fill_log(url, args.requests, rng, centers)
        print(
            f"logged {args.requests:,} requests in {fill:.1f}s "
            f"({args.requests / fill:,.0f}/s through RequestLogger)"
        )
        store = RequestStore(url)
        start = time.perf_counter()
        window = load_window(store, since=None, dim=profile.dim)
        read = time.perf_counter() - start
        report = drift_for_window(profile, window)
        total = time.perf_counter() - start
        store.engine.dispose()
    print(
        f"drift check over {len(window.texts):,} requests: {total:.1f}s "
        f"(database read {read:.1f}s, statistics {total - read:.1f}s); status {report.status}"
    )
    rate = encode_rate()
    if rate:
        no_cache = args.requests / rate + total
        print(
            f"baseline without the embedding cache: ~{no_cache:,.0f}s "
            f"(MiniLM {rate:.0f} texts/s here) -> cached check is {no_cache / total:.0f}x faster"
        )
    ev = evidently_seconds(profile.embedding_sample.astype(np.float32), window.embeddings)
    if ev:
        print(f"evidently embedding drift: {ev:.1f}s -> ratio honed/evidently {total / ev:.2f}")


if __name__ == "__main__":
    main()
