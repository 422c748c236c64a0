"""Evaluation stage config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from honed.config_base import StrictModel

Baseline = Literal["majority", "embeddings_logreg"]


class EvalConfig(StrictModel):
    """What the final report measures on the test split."""

    baselines: list[Baseline] = Field(
        default_factory=lambda: ["majority", "embeddings_logreg"],
        description="Baselines computed in the same report: the majority class, and the frozen "
        "base encoder's mean-pooled embeddings + logistic regression.",
    )
    worst_examples: int = Field(
        10, ge=0, description="List this many misclassified test examples, most confident first."
    )
    min_metrics: dict[str, float] = Field(
        default_factory=dict,
        description="Gate: the run fails (exit 3) when a test metric falls below its floor, "
        "e.g. {accuracy: 0.9}. The model is still saved but not registered.",
    )
