"""Monitor stage config: drift thresholds and service objectives (the spec's ``monitor:``)."""

from __future__ import annotations

from pydantic import Field, model_validator

from honed.config_base import StrictModel

COMPONENTS = (
    "embedding_cells",
    "embedding_pca",
    "domain_classifier",
    "text_length",
    "oov_rate",
    "language",
    "predictions",
    "confidence",
)


class ObjectivesConfig(StrictModel):
    """Service-level objectives over a window of logged requests. A breached objective is an
    alert (``slo.latency_p95``, ``slo.latency_p99``, ``slo.error_rate``)."""

    latency_p95_ms: float = Field(
        1000.0, gt=0, description="Objective: p95 latency (ms); above it, slo.latency_p95 alerts."
    )
    latency_p99_ms: float = Field(
        2500.0, gt=0, description="Objective: p99 latency (ms); above it, slo.latency_p99 alerts."
    )
    max_error_rate: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Objective: share of requests with status >= 500 or an error; above it, "
        "slo.error_rate alerts.",
    )
    min_requests: int = Field(
        20,
        ge=1,
        description="Fewer requests than this in the window: objectives are not judged (status "
        "'insufficient_data'), so one slow or failed request in a quiet hour pages nobody.",
    )


class DriftConfig(StrictModel):
    """Thresholds and knobs of a drift check. A component is ``warn`` at or above its warn
    threshold and ``alert`` at or above its alert threshold; the check's status is the worst
    component status."""

    psi_warn: float = Field(0.1, gt=0, description="PSI warn threshold (convention: 0.1).")
    psi_alert: float = Field(0.2, gt=0, description="PSI alert threshold (convention: 0.2).")
    auc_warn: float = Field(
        0.55, gt=0.5, le=1, description="Domain-classifier ROC AUC warn (Evidently default 0.55)."
    )
    auc_alert: float = Field(0.6, gt=0.5, le=1, description="Domain-classifier ROC AUC alert.")
    oov_warn: float = Field(
        0.05, gt=0, description="Warn when the OOV word rate rises this much (absolute)."
    )
    oov_alert: float = Field(0.1, gt=0, description="Alert on this absolute OOV-rate rise.")
    language_warn: float = Field(
        0.1, gt=0, le=1, description="Warn on this total variation distance of language shares."
    )
    language_alert: float = Field(0.2, gt=0, le=1, description="Alert on this language TVD.")
    confidence_warn: float = Field(
        0.05, gt=0, le=1, description="Warn when mean confidence drops this much (absolute)."
    )
    confidence_alert: float = Field(0.1, gt=0, le=1, description="Alert on this confidence drop.")
    min_window: int = Field(
        50, ge=2, description="Fewer window requests than this: status 'insufficient_data'."
    )
    classifier_max_samples: int = Field(
        1000, ge=20, description="Per side (reference, window) rows fed to the domain classifier."
    )
    cv_folds: int = Field(5, ge=2, le=20, description="Cross-validation folds of the classifier.")
    classifier_c: float = Field(
        0.1,
        gt=0,
        description="Inverse L2 strength of the logistic regression. Strong (0.1): hundreds "
        "of rows in 384 dimensions overfit otherwise, which adds noise to in-domain AUCs.",
    )
    epsilon: float = Field(
        1e-4,
        gt=0,
        lt=0.01,
        description="Share floor so PSI/KL stay finite on empty bins; the floor used is at "
        "least 0.5 / window size (half a count), so one empty bin in a small window does not "
        "read as drift.",
    )
    ignore: tuple[str, ...] = Field(
        (), description=f"Components computed but left out of the overall status: {COMPONENTS}."
    )
    seed: int = Field(0, description="Seed of the classifier's sampling and folds.")
    objectives: ObjectivesConfig = Field(
        default_factory=ObjectivesConfig,
        description="Latency and error-rate objectives `honed monitor drift` checks over the "
        "same window of logged requests (CLI flags override them).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> DriftConfig:
        for name in ("psi", "auc", "oov", "language", "confidence"):
            warn, alert = getattr(self, f"{name}_warn"), getattr(self, f"{name}_alert")
            if alert < warn:
                raise ValueError(f"{name}_alert ({alert}) must be >= {name}_warn ({warn})")
        unknown = set(self.ignore) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"ignore: unknown components {sorted(unknown)}; known: {COMPONENTS}")
        return self
