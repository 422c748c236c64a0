"""Monitor stage config: drift thresholds and service objectives (the spec's ``monitor:``)."""

from __future__ import annotations

from pydantic import Field, model_validator

from honed.config_base import StrictModel

COMPONENTS = (
    "embedding_cells",
    "embedding_pca",
    "domain_classifier",
    "novelty",
    "text_length",
    "oov_rate",
    "language",
    "predictions",
    "confidence",
    "traffic",
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
    component status.

    The fixed thresholds below are the smallest change worth reporting (an effect size). With
    ``calibrate`` on (default) each is raised to what in-domain windows of the checked size
    reach by chance: the high quantile of the component's null distribution, drawn from
    in-domain texts held out of the reference profile, at ``false_alarm_rate`` (alert) or
    ``warn_rate`` (warn) shared out over the components (weighted Bonferroni), so an in-domain
    window of any accepted size alerts with probability at most ``false_alarm_rate``."""

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
        50,
        ge=10,
        description="Fewer window requests than this: status 'insufficient_data', never an "
        "alert. At the default (50) a 30% mix of off-domain text is still detected.",
    )
    expect_traffic: bool = Field(
        False,
        description="An empty window is an alert of its own (component 'traffic'): the model "
        "should be receiving requests. Off: an empty window is 'insufficient_data'.",
    )
    calibrate: bool = Field(
        True,
        description="Calibrate the thresholds for the window's size (see above). Off: the "
        "fixed thresholds alone, which alarm often on small windows.",
    )
    false_alarm_rate: float = Field(
        0.001,
        gt=0,
        lt=0.5,
        description="Family-wise chance that an in-domain window alerts (any component), "
        "shared out over the components (weighted Bonferroni, see novelty_rate_share).",
    )
    warn_rate: float = Field(
        0.01,
        gt=0,
        lt=0.5,
        description="Family-wise chance that an in-domain window warns; >= false_alarm_rate.",
    )
    calibration_draws: int = Field(
        200,
        ge=20,
        le=10_000,
        description="Null windows drawn per window size (cached per profile and size).",
    )
    classifier_draws: int = Field(
        60,
        ge=20,
        le=10_000,
        description="Of those, how many also fit the domain classifier (5 logistic "
        "regressions each, ~0.03-0.1 s on 2 cores; the other statistics cost ~1 ms).",
    )
    novelty_quantile: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="A text is novel when its nearest reference text is less similar than "
        "for this share of held-out in-domain texts (so about this share is novel in domain).",
    )
    novelty_rate_share: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Share of false_alarm_rate / warn_rate given to the novelty component (the "
        "most sensitive to a mix of other texts in a small window); the other components split "
        "the rest evenly (weighted Bonferroni).",
    )
    novelty_warn: float = Field(
        0.1, gt=0, le=1, description="Warn when at least this share of the window is novel."
    )
    novelty_alert: float = Field(
        0.15, gt=0, le=1, description="Alert when at least this share of the window is novel."
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
        for name in ("psi", "auc", "oov", "language", "confidence", "novelty"):
            warn, alert = getattr(self, f"{name}_warn"), getattr(self, f"{name}_alert")
            if alert < warn:
                raise ValueError(f"{name}_alert ({alert}) must be >= {name}_warn ({warn})")
        if self.warn_rate < self.false_alarm_rate:
            raise ValueError(
                f"warn_rate ({self.warn_rate}) must be >= false_alarm_rate "
                f"({self.false_alarm_rate})"
            )
        unknown = set(self.ignore) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"ignore: unknown components {sorted(unknown)}; known: {COMPONENTS}")
        return self


class CanaryConfig(StrictModel):
    """Canary analysis (``honed monitor canary``, the loop's canary step): the challenger's arm
    (``canary``: a share of live traffic; ``shadow``: a copy of it, answers never returned)
    against the primary over a window of the request log. The decision is ``wait`` until each
    arm has ``min_requests``; then ``rollback`` when any guard below fails, else ``promote``."""

    window: str = Field(
        "1h",
        pattern=r"^\s*\d+(\.\d+)?\s*[smhdw]\s*$",
        description="Window analysed when no start is given (e.g. 30m, 1h, 1d): back from now.",
    )
    min_requests: int = Field(
        200,
        ge=1,
        description="Requests each arm needs before anything is decided (decision 'wait').",
    )
    max_error_rate_increase: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Largest rise of the challenger's error rate (status >= 500) over the "
        "primary's, absolute (0.01 = one point).",
    )
    max_latency_p95_ratio: float = Field(
        1.5, ge=1, description="Largest challenger / primary ratio of p95 latency."
    )
    latency_slack_ms: float = Field(
        10.0,
        ge=0,
        description="A p95 difference below this many ms never fails the latency guard (on a "
        "fast model a ratio of tiny numbers is noise).",
    )
    max_prediction_shift: float = Field(
        0.25,
        gt=0,
        le=1,
        description="Largest total variation distance between the arms' predicted-label "
        "distributions (0: same shares, 1: disjoint). A better model trained on drifted data "
        "moves some predictions; a broken one moves many.",
    )
    min_agreement: float = Field(
        0.7,
        ge=0,
        le=1,
        description="Smallest share of paired requests on which the arms give the same label "
        "(shadow mode: the same request answered by both; canary mode: identical inputs).",
    )
    min_agreement_pairs: int = Field(
        50, ge=1, description="Fewer pairs than this: agreement is reported, not judged."
    )
    feedback_margin: float = Field(
        0.05,
        ge=0,
        le=1,
        description="The challenger's negative-feedback rate (thumbs down, a correction that "
        "differs from its label, a regenerate or abandoned stream, per request) may exceed the "
        "primary's by this much; the guard fails when a one-sided two-proportion z-test says "
        "it exceeds it by more (significance: alpha).",
    )
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Significance of the feedback test.")
