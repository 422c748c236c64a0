"""Prometheus metrics in a per-app CollectorRegistry (two apps in one process never clash)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_GUARD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Request count/latency, tokens, queue depth, batch sizes and errors per model/adapter.

    `model` is the base/classifier id; `adapter` the adapter id or "" (base weights);
    `version` the registry version that answered ("NAME/3"), else its weights digest, else ""
    (`version_label`). Unknown model ids are recorded as "unknown" (version "") so callers
    cannot inflate label cardinality: every label value comes from a loaded model.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "honed_requests",
            "Requests answered.",
            ["route", "model", "version", "adapter", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "honed_request_latency_seconds",
            "Request latency.",
            ["route", "model", "version", "adapter"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "honed_time_to_first_token_seconds",
            "Time to first token.",
            ["model", "version", "adapter"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_in = Counter(
            "honed_prompt_tokens", "Prompt tokens.", ["model", "version", "adapter"], registry=r
        )
        self.tokens_out = Counter(
            "honed_completion_tokens",
            "Generated tokens.",
            ["model", "version", "adapter"],
            registry=r,
        )
        self.errors = Counter(
            "honed_errors",
            "Error answers.",
            ["route", "model", "version", "adapter", "type"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "honed_queue_depth", "Queued requests.", ["model", "version"], registry=r
        )
        # Which weights answered: `arm` primary | canary | shadow, `version` the registry
        # version ("NAME/3"; "" for a folder). Bounded: models x 3 arms x versions loaded.
        self.arm_requests = Counter(
            "honed_arm_requests",
            "Requests routed per model, traffic arm and model version.",
            ["model", "arm", "version"],
            registry=r,
        )
        self.worker_restarts = Gauge(
            "honed_classifier_worker_restarts",
            "Classifier worker processes replaced after dying (classify_processes > 0).",
            ["model", "version"],
            registry=r,
        )
        # Configured guards (honed.serve.http.guards): `guard` is a configured name, so the
        # label values are few; `decision` pass | flag | redact | block.
        self.guard_decisions = Counter(
            "honed_guard_decisions",
            "Guard decisions per configured guard.",
            ["guard", "decision", "route"],
            registry=r,
        )
        self.guard_latency = Histogram(
            "honed_guard_latency_seconds",
            "Time spent in each configured guard per request.",
            ["guard"],
            buckets=_GUARD_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "honed_batch_size",
            "Rows per forward pass.",
            ["model", "version"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )


def version_label(model: Any) -> str:
    """The `version` label of an engine model's series (see Metrics)."""
    return getattr(model, "version", None) or getattr(model, "digest", None) or ""
