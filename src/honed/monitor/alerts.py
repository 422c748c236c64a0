"""Alerts from crossed thresholds: a log line, a webhook POST, Prometheus gauges.

    alerts = alerts_from_drift(report, model="financial-sentiment")
    alerts += alerts_from_objectives(report.objectives, model="financial-sentiment")
    dispatch(alerts, [LogSink(), WebhookSink(url), PrometheusSink()])

Every sink is tried even when another fails (a dead webhook must not hide the log line);
failures are logged and returned.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from honed.monitor.drift import ALERT, WARN, DriftReport

log = logging.getLogger("honed.monitor.alerts")
_STATUS_CODE = {"ok": 0, WARN: 1, ALERT: 2}


@dataclass(frozen=True)
class Alert:
    """One crossed threshold."""

    name: str  # e.g. "drift.domain_classifier", "slo.latency_p95"
    severity: str  # "warn" | "alert"
    value: float | None
    threshold: float | None
    message: str
    model: str | None = None
    created_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Sink(Protocol):
    def send(self, alerts: Sequence[Alert], report: DriftReport | None = None) -> None: ...


def _stamp() -> str:
    return datetime.now(UTC).isoformat()


def alerts_from_drift(report: DriftReport, model: str | None = None) -> list[Alert]:
    """One alert per component at warn or alert."""
    out = []
    for comp in report.alerts():
        threshold = comp.alert if comp.status == ALERT else comp.warn
        out.append(
            Alert(
                name=f"drift.{comp.name}",
                severity=comp.status,
                value=comp.value,
                threshold=threshold,
                message=comp.details.get("message")  # e.g. the empty-window alert
                or f"{comp.name} {comp.metric}={comp.value:.3f} >= {threshold:.3g} "
                f"({comp.status}; window of {report.window_size} requests)",
                model=model,
                created_at=_stamp(),
            )
        )
    return out


_OBJECTIVE_KEYS = {  # breach name -> (objective field, unit)
    "latency_p95": ("latency_p95_ms", "ms"),
    "latency_p99": ("latency_p99_ms", "ms"),
    "error_rate": ("max_error_rate", ""),
}


def alerts_from_objectives(service: dict[str, Any], model: str | None = None) -> list[Alert]:
    """Alerts for breached service objectives (from quality.service_objectives)."""
    out = []
    limits = service.get("objectives") or {}
    for name in service.get("breaches", []):
        value = service["error_rate"] if name == "error_rate" else None
        if name.startswith("latency_"):
            value = service["latency_ms"][name.split("_", 1)[1]]
        key, unit = _OBJECTIVE_KEYS.get(name, (name, ""))
        threshold = limits.get(key)
        shown = f"{value:.4g}{unit and ' ' + unit}" if value is not None else "-"
        limit = f" > objective {threshold}{unit and ' ' + unit}" if threshold is not None else ""
        size = f" (window of {service['n']} requests)" if "n" in service else ""
        out.append(
            Alert(
                f"slo.{name}",
                ALERT,
                value,
                threshold,
                f"objective breached: {name}={shown}{limit}{size}",
                model,
                _stamp(),
            )
        )
    return out


def _worst(report: DriftReport | None, alerts: Sequence[Alert]) -> str:
    """The worst of the report's status and the alerts' severities (objective alerts can make
    a window with no drift an alert)."""
    levels = [a.severity for a in alerts] + ([report.status] if report is not None else [])
    return max(levels, key=lambda s: _STATUS_CODE.get(s, -1), default=ALERT)


class LogSink:
    """A WARNING (warn) or ERROR (alert) log line per alert."""

    def __init__(self, logger: logging.Logger | None = None):
        self.logger = logger or log

    def send(self, alerts: Sequence[Alert], report: DriftReport | None = None) -> None:
        for a in alerts:
            level = logging.ERROR if a.severity == ALERT else logging.WARNING
            self.logger.log(level, "honed alert %s [%s] %s", a.name, a.severity, a.message)


class WebhookSink:
    """POST ``{"alerts": [...], "status": ...}`` as JSON to ``url`` (Slack-style receivers,
    Alertmanager-compatible proxies, ...). ``min_severity`` filters warn-level alerts out."""

    def __init__(
        self,
        url: str,
        timeout_s: float = 5.0,
        headers: dict[str, str] | None = None,
        min_severity: str = WARN,
    ):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must be http(s): {url!r}")
        self.url, self.timeout_s, self.headers = url, timeout_s, headers or {}
        self.min_level = _STATUS_CODE[min_severity]

    def send(self, alerts: Sequence[Alert], report: DriftReport | None = None) -> None:
        import httpx

        chosen = [a for a in alerts if _STATUS_CODE.get(a.severity, 0) >= self.min_level]
        if not chosen:
            return
        body = {
            "source": "honed",
            "status": _worst(report, chosen),
            "alerts": [a.to_dict() for a in chosen],
            "text": "\n".join(f"[{a.severity}] {a.name}: {a.message}" for a in chosen),
        }
        response = httpx.post(
            self.url,
            content=json.dumps(body),
            headers={"Content-Type": "application/json", **self.headers},
            timeout=self.timeout_s,
        )
        response.raise_for_status()


class PrometheusSink:
    """Gauges per drift component (value and status 0/1/2), the overall status, the service
    objectives of the window (measure, breached 0/1), and a counter of alerts. Uses its own
    ``CollectorRegistry`` unless given one (pass ``prometheus_client.REGISTRY`` to expose them
    on the server's default /metrics)."""

    def __init__(self, registry=None, namespace: str = "honed", model: str = ""):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = registry if registry is not None else CollectorRegistry()
        self.model = model
        labels = ["model", "component"]
        self.value = Gauge(
            f"{namespace}_drift_value",
            "Drift metric per component",
            labels,
            registry=self.registry,
        )
        self.status = Gauge(
            f"{namespace}_drift_status", "0 ok, 1 warn, 2 alert", labels, registry=self.registry
        )
        self.overall = Gauge(
            f"{namespace}_drift_overall_status",
            "Worst component status (0/1/2)",
            ["model"],
            registry=self.registry,
        )
        self.window = Gauge(
            f"{namespace}_drift_window_size",
            "Requests in the last drift window",
            ["model"],
            registry=self.registry,
        )
        self.slo_value = Gauge(
            f"{namespace}_slo_value",
            "Service-objective measure of the last window (latency_p*_ms, error_rate)",
            ["model", "objective"],
            registry=self.registry,
        )
        self.slo_breached = Gauge(
            f"{namespace}_slo_breached",
            "1 when the objective was breached in the last window, else 0",
            ["model", "objective"],
            registry=self.registry,
        )
        self.alerts = Counter(
            f"{namespace}_alerts",
            "Alerts raised",
            ["model", "name", "severity"],
            registry=self.registry,
        )

    def send(self, alerts: Sequence[Alert], report: DriftReport | None = None) -> None:
        model = next((a.model for a in alerts if a.model), None) or self.model
        if report is not None:
            self.observe(report, model)
        for a in alerts:
            self.alerts.labels(a.model or "", a.name, a.severity).inc()

    def observe(self, report: DriftReport, model: str = "") -> None:
        """Set the gauges from a drift report (also when nothing crossed a threshold)."""
        for name, comp in report.components.items():
            if comp.value is not None:
                self.value.labels(model, name).set(comp.value)
            self.status.labels(model, name).set(_STATUS_CODE.get(comp.status, 0))
        self.overall.labels(model).set(_STATUS_CODE.get(report.status, 0))
        self.window.labels(model).set(report.window_size)
        if report.objectives:
            self.observe_objectives(report.objectives, model)

    def observe_objectives(self, service: dict[str, Any], model: str = "") -> None:
        """Set the objective gauges from quality.service_objectives (breached or not)."""
        measures = {f"latency_{q}_ms": v for q, v in service["latency_ms"].items()}
        measures["error_rate"] = service["error_rate"]
        for name, value in measures.items():
            if value is not None:
                self.slo_value.labels(model, name).set(value)
        for name in _OBJECTIVE_KEYS:
            breached = name in service.get("breaches", [])
            self.slo_breached.labels(model, name).set(1 if breached else 0)


def dispatch(
    alerts: Sequence[Alert], sinks: Iterable[Sink], report: DriftReport | None = None
) -> list[str]:
    """Send ``alerts`` to every sink; returns the error messages of sinks that failed."""
    errors = []
    for sink in sinks:
        try:
            sink.send(alerts, report)
        except Exception as err:  # one broken sink must not silence the others
            msg = f"{type(sink).__name__}: {err}"
            log.error("alert sink failed: %s", msg)
            errors.append(msg)
    return errors
