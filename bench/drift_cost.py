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
  * Evidently's embedding drift on exactly the matrices honed's domain classifier compares
    (the profile's 2,000-row reference sample, the 100,000 window rows as read back from the
    database), saved as .npy and run by bench/_evidently_drift.py in .venv-bench (``make
    bench-venv``; the ``bench`` extra, kept out of .venv). Two like-for-like ratios, Evidently
    seconds / honed seconds; no side embeds texts in any of them (embeddings are cached):
      - drift method only, matrices in memory: Evidently's default method (``model``: a
        domain classifier) vs honed's domain classifier component;
      - as each is run: Evidently ``Report.run`` with ``EmbeddingsDrift`` (Dataset from pandas,
        the method, a t-SNE for its plot) vs honed's whole check (database read, cells, PCA,
        domain classifier, text stats, predictions, confidence).
    Process start-up and ``import evidently`` are printed apart and not in either ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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


BENCH_PYTHON = Path(__file__).resolve().parent.parent / ".venv-bench" / "bin" / "python"


def evidently_run(ref: np.ndarray, cur: np.ndarray, tmp: str) -> dict | None:
    """Evidently's embedding drift on ``ref`` / ``cur`` in .venv-bench (None when missing)."""
    if not BENCH_PYTHON.exists():
        print(f"Evidently skipped: {BENCH_PYTHON} missing (create it with `make bench-venv`)")
        return None
    paths = [str(Path(tmp) / "reference.npy"), str(Path(tmp) / "current.npy")]
    np.save(paths[0], ref.astype(np.float32))
    np.save(paths[1], cur.astype(np.float32))
    script = Path(__file__).resolve().parent / "_evidently_drift.py"
    start = time.perf_counter()
    proc = subprocess.run(
        [str(BENCH_PYTHON), str(script), *paths], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"Evidently failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        return None
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = wall
    return result


def print_evidently(ev: dict, honed: dict[str, float], classifier) -> None:
    drift = "detected" if ev["drift_detected"] else "not detected"
    print(
        f"Evidently {ev['evidently']} embedding drift ({ev['method']} method) on the same "
        f"{ev['reference_rows']:,} x {ev['current_rows']:,} matrices: AUC "
        f"{ev['drift_score']:.3f} (threshold {ev['threshold']}) -> drift {drift}; "
        f"honed domain classifier AUC {classifier.value:.3f} -> {classifier.status}"
    )
    rows = [
        ("drift method only, in memory", ev["method_s"], "domain classifier", honed["clf"]),
        ("as run (Evidently Report.run)", ev["report_s"], "whole check", honed["total"]),
    ]
    for what, ev_s, honed_what, honed_s in rows:
        print(
            f"  {what}: Evidently {ev_s:.1f}s vs honed {honed_what} {honed_s:.1f}s "
            f"-> ratio Evidently/honed {ev_s / honed_s:.1f}"
        )
    print(
        f"  (not in the ratios: Evidently subprocess {ev['process_s']:.1f}s in all, of which "
        f"import {ev['import_s']:.1f}s; honed embedding components only, in memory "
        f"{honed['emb']:.1f}s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--db", help="Database URL (default: SQLite in a temporary folder).")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(2)
    from honed.evals.profile import build_reference_profile
    from honed.monitor.drift import DriftConfig, check_drift, classifier_drift
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
    # The embedding parts alone, on the window already in memory (what Evidently is timed on).
    start = time.perf_counter()
    check_drift(profile, embeddings=window.embeddings)
    emb_s = time.perf_counter() - start
    start = time.perf_counter()
    classifier = classifier_drift(profile, window.embeddings, DriftConfig())
    clf_s = time.perf_counter() - start
    rate = encode_rate()
    if rate:
        no_cache = args.requests / rate + total
        print(
            f"baseline without the embedding cache: ~{no_cache:,.0f}s "
            f"(MiniLM {rate:.0f} texts/s here) -> cached check is {no_cache / total:.0f}x faster"
        )
    with tempfile.TemporaryDirectory() as tmp:
        ev = evidently_run(profile.embedding_sample, window.embeddings, tmp)
    if ev:
        print_evidently(ev, {"total": total, "emb": emb_s, "clf": clf_s}, classifier)


if __name__ == "__main__":
    main()
