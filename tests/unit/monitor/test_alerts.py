from __future__ import annotations

import logging

import pytest
from prometheus_client import generate_latest

from honed.monitor.alerts import (
    LogSink,
    PrometheusSink,
    WebhookSink,
    alerts_from_drift,
    alerts_from_objectives,
    dispatch,
)
from honed.monitor.drift import ComponentResult, DriftReport


def _report():
    comps = {
        "embedding_cells": ComponentResult("embedding_cells", "psi", 0.25, "alert", 0.1, 0.2),
        "domain_classifier": ComponentResult(
            "domain_classifier", "roc_auc", 0.57, "warn", 0.55, 0.6
        ),
        "text_length": ComponentResult("text_length", "psi", 0.01, "ok", 0.1, 0.2),
    }
    return DriftReport("alert", 300, comps)


def test_alerts_from_drift():
    alerts = alerts_from_drift(_report(), model="m")
    assert [(a.name, a.severity, a.threshold) for a in alerts] == [
        ("drift.embedding_cells", "alert", 0.2),
        ("drift.domain_classifier", "warn", 0.55),
    ]
    assert "psi=0.250" in alerts[0].message


def test_webhook_posts_json_to_loopback_receiver(receiver):
    url, received = receiver
    errors = dispatch(alerts_from_drift(_report(), "m"), [WebhookSink(url)], _report())
    assert errors == []
    ctype, body = received[0]
    assert ctype == "application/json" and body["status"] == "alert"
    assert [a["name"] for a in body["alerts"]] == [
        "drift.embedding_cells",
        "drift.domain_classifier",
    ]
    dispatch(alerts_from_drift(_report()), [WebhookSink(url, min_severity="alert")])
    assert [a["severity"] for a in received[1][1]["alerts"]] == ["alert"]


def test_failing_sink_does_not_stop_others(caplog):
    dead = WebhookSink("http://127.0.0.1:9/none", timeout_s=1.0)
    with caplog.at_level(logging.WARNING, logger="honed.monitor.alerts"):
        errors = dispatch(alerts_from_drift(_report(), "m"), [dead, LogSink()])
    assert len(errors) == 1 and errors[0].startswith("WebhookSink")
    assert any("drift.embedding_cells" in r.getMessage() for r in caplog.records)


def test_prometheus_gauges_on_private_registry():
    sink = PrometheusSink(model="m")
    dispatch(alerts_from_drift(_report(), "m"), [sink], _report())
    text = generate_latest(sink.registry).decode()
    assert 'honed_drift_value{component="embedding_cells",model="m"} 0.25' in text
    assert 'honed_drift_status{component="domain_classifier",model="m"} 1.0' in text
    assert 'honed_drift_overall_status{model="m"} 2.0' in text
    assert 'honed_alerts_total{model="m",name="drift.embedding_cells",severity="alert"} 1.0' in text
    PrometheusSink()  # a second sink does not collide (own registry)


def test_objective_alerts_and_bad_url():
    service = {
        "breaches": ["latency_p95", "error_rate"],
        "error_rate": 0.05,
        "latency_ms": {"p95": 1500.0},
    }
    names = [(a.name, a.value) for a in alerts_from_objectives(service)]
    assert names == [("slo.latency_p95", 1500.0), ("slo.error_rate", 0.05)]
    with pytest.raises(ValueError, match="http"):
        WebhookSink("ftp://x")


def _service(breaches):
    from honed.monitor.quality import ObjectivesConfig, service_objectives

    lat = [2000.0 if "latency_p95" in breaches else 10.0] * 10 + [10.0] * 90
    codes = [500 if "error_rate" in breaches else 200] * 10 + [200] * 90
    return service_objectives(lat, codes, cfg=ObjectivesConfig(latency_p99_ms=5000))


def test_objective_alerts_carry_threshold_and_window():
    alerts = alerts_from_objectives(_service(["latency_p95", "error_rate"]), "m")
    assert [(a.name, a.threshold) for a in alerts] == [
        ("slo.latency_p95", 1000.0),
        ("slo.error_rate", 0.01),
    ]
    assert "> objective 1000.0 ms" in alerts[0].message and "100 requests" in alerts[0].message
    assert alerts_from_objectives(_service([])) == []


def test_webhook_status_is_alert_for_objectives_without_drift(receiver):
    url, received = receiver
    quiet = DriftReport("ok", 300, {})
    dispatch(alerts_from_objectives(_service(["error_rate"])), [WebhookSink(url)], quiet)
    assert received[0][1]["status"] == "alert"
    assert [a["name"] for a in received[0][1]["alerts"]] == ["slo.error_rate"]


def test_prometheus_objective_gauges():
    sink = PrometheusSink(model="m")
    report = DriftReport("ok", 100, {}, objectives=_service(["latency_p95"]))
    dispatch(alerts_from_objectives(report.objectives, "m"), [sink], report)
    text = generate_latest(sink.registry).decode()
    assert 'honed_slo_breached{model="m",objective="latency_p95"} 1.0' in text
    assert 'honed_slo_breached{model="m",objective="error_rate"} 0.0' in text
    assert 'honed_slo_value{model="m",objective="latency_p95_ms"} 2000.0' in text
    assert 'honed_alerts_total{model="m",name="slo.latency_p95",severity="alert"} 1.0' in text
