from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

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


class _Receiver(BaseHTTPRequestHandler):
    received: list = []  # noqa: RUF012

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    _Receiver.received = []
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", _Receiver.received
    server.shutdown()
    server.server_close()


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
