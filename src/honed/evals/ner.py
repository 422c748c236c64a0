"""Entity-level metrics of token classification (seqeval, CoNLL-style): an entity counts as
found only when its type and its whole extent match."""

from __future__ import annotations

from typing import Any


def entity_metrics(y_true: list[list[str]], y_pred: list[list[str]]) -> dict[str, Any]:
    """Micro precision/recall/F1 over entities, token accuracy, and ``per_class``:
    {entity type: {precision, recall, f1, support}}."""
    from seqeval.metrics import accuracy_score, classification_report

    if not any(y_true) and not any(y_pred):
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.0, "per_class": {}}
    report = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    per_class = {
        name: {
            "precision": float(row["precision"]),
            "recall": float(row["recall"]),
            "f1": float(row["f1-score"]),
            "support": int(row["support"]),
        }
        for name, row in report.items()
        if not name.endswith(" avg")
    }
    return {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "per_class": per_class,
    }
