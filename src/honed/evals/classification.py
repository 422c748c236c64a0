"""Classification metrics (scikit-learn), the confusion-matrix plot, the worst errors and the
two baselines that show what fine-tuning bought: majority class, and frozen base embeddings +
logistic regression."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, weighted/macro F1 and per-class precision/recall/F1 for string labels."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    labels = list(labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
        "weighted_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
        ),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
    }


def confusion(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> list[list]:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=list(labels)).tolist()


def save_confusion_png(matrix: list[list[int]], labels: Sequence[str], path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(1.6 * len(labels) + 2.5, 1.4 * len(labels) + 2))
    ConfusionMatrixDisplay(np.array(matrix), display_labels=list(labels)).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d"
    )
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def worst_errors(
    rows: Sequence[dict], predictions: Sequence[dict], limit: int
) -> list[dict[str, Any]]:
    """Misclassified rows, most confidently wrong first."""
    wrong = [
        {
            "text": row["text"],
            "label": row["label"],
            "predicted": pred["label"],
            "confidence": round(float(pred["score"]), 4),
            "line": row.get("line"),
        }
        for row, pred in zip(rows, predictions, strict=True)
        if pred["label"] != row["label"]
    ]
    wrong.sort(key=lambda item: -item["confidence"])
    return wrong[:limit]


def majority_baseline(train_labels: Sequence[str], test_labels: Sequence[str], labels) -> dict:
    from collections import Counter

    majority = Counter(train_labels).most_common(1)[0][0]
    metrics = classification_metrics(test_labels, [majority] * len(test_labels), labels)
    metrics["predicts"] = majority
    return metrics


def embeddings_logreg_baseline(
    model_path: Path,
    fit_rows: Sequence[dict],
    test_rows: Sequence[dict],
    labels: Sequence[str],
    max_length: int = 128,
) -> dict:
    """Frozen base encoder, mean-pooled embeddings, logistic regression on train+validation."""
    from sklearn.linear_model import LogisticRegression

    from honed.models.embed import Embedder

    embedder = Embedder(model_path, max_length=max_length)
    x_fit = embedder.encode([r["text"] for r in fit_rows])  # (n_fit, hidden)
    x_test = embedder.encode([r["text"] for r in test_rows])  # (n_test, hidden)
    clf = LogisticRegression(max_iter=2000, C=10.0)
    clf.fit(x_fit, [r["label"] for r in fit_rows])
    return classification_metrics([r["label"] for r in test_rows], clf.predict(x_test), labels)
