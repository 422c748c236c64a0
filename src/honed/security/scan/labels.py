"""Checks on labelled rows: duplicates whose labels disagree, likely label errors (cleanlab
on cross-validated probabilities of a logistic regression over frozen sentence embeddings)
and outliers (embedding distance to the nearest rows, text length)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from honed.data.frozen import normalise
from honed.security.scan.config import ScanConfig
from honed.security.scan.findings import Finding


def conflicting_duplicates(
    rows: list[dict[str, Any]], raw_labels: dict[str, set[str]] | None = None
) -> list[Finding]:
    """One finding per normalised text seen with more than one label, naming every scanned
    row that has it. ``raw_labels`` adds the labels of copies already removed before the
    scan (exact duplicates are dropped when the data is read, the first copy winning)."""
    groups: dict[str, list[int]] = {}
    labels: dict[str, set[str]] = {}
    for i, row in enumerate(rows):
        key = normalise(row["text"])
        groups.setdefault(key, []).append(i)
        labels.setdefault(key, set()).add(row["label"])
    for key, seen in (raw_labels or {}).items():
        if key in labels:
            labels[key] |= seen
    return [
        Finding(
            "conflicting_duplicate",
            groups[key],
            f"the same text is labelled {', '.join(repr(x) for x in sorted(labels[key]))}",
        )
        for key in groups
        if len(labels[key]) > 1
    ]


def out_of_fold_probabilities(
    emb: np.ndarray, y: np.ndarray, n_labels: int, folds: int, seed: int = 0
) -> np.ndarray | None:
    """(n, n_labels) probabilities, each row predicted by a model that never saw it; None when
    a label has too few rows to split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    smallest = min(Counter(y.tolist()).values())
    folds = min(folds, smallest)
    if folds < 2 or len(set(y.tolist())) < 2:
        return None
    model = LogisticRegression(max_iter=1000, C=1.0)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probs = cross_val_predict(model, emb, y, cv=cv, method="predict_proba")
    full = np.zeros((len(y), n_labels))
    full[:, sorted(set(y.tolist()))] = probs  # columns of labels absent here stay 0
    return full


def label_errors(probs: np.ndarray, y: np.ndarray, names: list[str]) -> list[Finding]:
    """cleanlab's find_label_issues, worst first."""
    from cleanlab.filter import find_label_issues

    issues = find_label_issues(
        labels=y, pred_probs=probs, return_indices_ranked_by="self_confidence"
    )
    out = []
    for i in issues:
        guess = int(probs[i].argmax())
        out.append(
            Finding(
                "label_error",
                [int(i)],
                f"labelled {names[y[i]]!r}; a model that never saw it says {names[guess]!r} "
                f"(p={probs[i, guess]:.2f})",
                score=float(probs[i, y[i]]),
            )
        )
    return out


def _robust_z(values: np.ndarray) -> np.ndarray:
    med = np.median(values)
    mad = np.median(np.abs(values - med)) * 1.4826
    return (values - med) / mad if mad > 0 else np.zeros_like(values)


def _knn_distance(emb: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Mean cosine distance of each row to its k nearest other rows (chunked: n x n never
    held at once)."""
    n = emb.shape[0]
    k = min(k, n - 1)
    out = np.zeros(n)
    for start in range(0, n, chunk):
        sims = emb[start : start + chunk] @ emb.T
        sims[np.arange(sims.shape[0]), np.arange(start, start + sims.shape[0])] = -np.inf
        top = -np.partition(-sims, k - 1, axis=1)[:, :k]
        out[start : start + chunk] = 1.0 - top.mean(axis=1)
    return out


def outliers(emb: np.ndarray | None, texts: list[str], cfg: ScanConfig) -> list[Finding]:
    """Rows whose distance to their nearest rows, or whose length (log characters), has a
    robust z-score above ``cfg.outlier_z``."""
    out = []
    z_len = _robust_z(np.log1p([len(t) for t in texts]))
    for i in np.flatnonzero(np.abs(z_len) > cfg.outlier_z):
        out.append(Finding("outlier", [int(i)], f"{len(texts[i])} characters (z={z_len[i]:.1f})"))
    if emb is not None and emb.shape[0] > cfg.neighbours + 1:
        z_emb = _robust_z(_knn_distance(emb, cfg.neighbours))
        for i in np.flatnonzero(z_emb > cfg.outlier_z):
            out.append(Finding("outlier", [int(i)], f"far from every other row (z={z_emb[i]:.1f})"))
    return out
