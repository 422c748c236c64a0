"""Evaluation stage config."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from honed.config_base import StrictModel

Baseline = Literal["majority", "embeddings_logreg"]


class GenerationConfig(StrictModel):
    """Decoding settings of generated samples (recorded next to them in samples.json)."""

    max_new_tokens: int | None = Field(
        None,
        gt=0,
        description="Tokens generated per sample; default: the task's (64; seq2seq 96 for "
        "summaries, dpo 48 for its side-by-side samples).",
    )
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    repetition_penalty: float = Field(1.1, gt=0, description="Penalty on repeated tokens.")
    batch_size: int = Field(8, gt=0, description="Prompts per generate call.")


GatedMetric = Literal[
    "accuracy", "macro_f1", "weighted_f1", "loss", "rougeL", "rouge1", "reward_accuracy"
]


class GateConfig(StrictModel):
    """The promotion gate: a challenger against the champion on the champion's frozen set.

    Every gated metric must be "not worse beyond the margin": the one-sided lower confidence
    bound of (challenger - champion) must lie above -margin (for loss, lower is better: the
    upper bound of the difference must lie below +margin). Besides: no class's recall may
    drop by more than ``max_recall_drop``, and every golden example must keep its label.
    Without a champion (the first model) only the metric floors (``eval.min_metrics``) apply.
    """

    enabled: bool = Field(
        True, description="Run the gate before a promotion (`honed models promote`, the loop)."
    )
    metrics: list[GatedMetric] | None = Field(
        None,
        description="Metrics that must not get worse. Default: accuracy and macro_f1 for "
        "classifiers; loss (and rougeL where references exist, reward_accuracy for reward "
        "models) for generators. Metrics the task cannot measure are reported and skipped.",
    )
    margin: float = Field(
        0.005,
        ge=0,
        lt=1,
        description="Non-inferiority margin in metric units (0.005 = half a point of accuracy): "
        "the most a challenger may be worse, at the stated confidence, and still pass.",
    )
    margins: dict[str, float] = Field(
        default_factory=dict,
        description="Per-metric margins overriding `margin`, e.g. {loss: 0.02} (nats).",
    )
    confidence: float = Field(
        0.95,
        gt=0.5,
        lt=1,
        description="Level of the one-sided confidence bound: 0.95 means a challenger truly "
        "worse than the margin passes at most 5% of the time.",
    )
    bootstrap_samples: int = Field(
        2000, ge=200, description="Paired bootstrap resamples (F1, loss, ROUGE, recall)."
    )
    seed: int = Field(0, description="Seed of the bootstrap: the same inputs, the same decision.")
    max_recall_drop: float | None = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest allowed drop of any class's recall (observed, challenger vs "
        "champion). null: not checked.",
    )
    require_golden: bool = Field(
        True,
        description="Every golden example (eval.golden) must keep its label (classifiers) or "
        "pass its checks (generators).",
    )

    def margin_for(self, metric: str) -> float:
        return self.margins.get(metric, self.margin)


class EvalConfig(StrictModel):
    """What the final report measures on the test split."""

    @model_validator(mode="after")
    def _regex_given(self) -> EvalConfig:
        if self.format == "regex":
            if not self.format_regex:
                raise ValueError("format_regex: required when format is 'regex'")
            try:
                re.compile(self.format_regex)
            except re.error as err:
                raise ValueError(f"format_regex: not a valid regular expression ({err})") from None
        return self

    baselines: list[Baseline] = Field(
        default_factory=lambda: ["majority", "embeddings_logreg"],
        description="Baselines computed in the same report: the majority class, and the frozen "
        "base encoder's mean-pooled embeddings + logistic regression.",
    )
    worst_examples: int = Field(
        10, ge=0, description="List this many misclassified test examples, most confident first."
    )
    generation: GenerationConfig = Field(
        default_factory=GenerationConfig, description="Generative tasks: decoding settings."
    )
    format: Literal["json", "regex"] | None = Field(
        None,
        description="Generative tasks: check that answers are valid JSON, or fully match "
        "format_regex; the adherence rate is reported.",
    )
    format_regex: str | None = Field(None, description="Pattern used when format is 'regex'.")
    min_metrics: dict[str, float] = Field(
        default_factory=dict,
        description="Gate: the run fails (exit 3) when a test metric falls below its floor, "
        "e.g. {accuracy: 0.9}. The model is still saved but not registered.",
    )
    frozen_set: str = Field(
        "auto",
        description="The test split. 'auto': when the registered name has a champion "
        "(NAME@champion), reuse its frozen evaluation set (eval/frozen_test.jsonl in its "
        "folder) unchanged, and drop from train/validation every row whose normalised text is "
        "in it; otherwise split as usual. A path to a jsonl of {text, label} rows: use that "
        "file. 'none': always split anew. Every run writes its test split as its own frozen "
        "set. Classification only; other tasks always split.",
    )
    golden: str | None = Field(
        None,
        description="jsonl of must-keep examples ({text, label}) the gate checks one by one; "
        "copied into the run folder (eval/golden.jsonl). They may also be trained on. When "
        "unset, a run inherits the champion's golden file.",
    )
    gate: GateConfig = Field(
        default_factory=GateConfig,
        description="The promotion gate against the champion (paired tests on the frozen set).",
    )
