from __future__ import annotations

import argparse
import json
import logging
import shutil
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from honed.errors import HonedError
from honed.evals.profile import PROFILE_DIRNAME, ProfileConfig, build_reference_profile
from honed.monitor.commands import register
from honed.monitor.requestlog import RequestLogger, make_engine
from honed.monitor.window import parse_duration


def _run(argv):
    parser = argparse.ArgumentParser(prog="honed")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("HONED_HOME", str(tmp_path / "home"))
    rng = np.random.default_rng(0)
    center = rng.standard_normal(16)
    ref_emb = _unit(center + 0.5 * rng.standard_normal((400, 16)))
    texts = [f"the company said profit rose {i} percent" for i in range(400)]
    profile = build_reference_profile(
        texts,
        labels=["pos", "neg"] * 200,
        embeddings=ref_emb,
        config=ProfileConfig(n_clusters=4, n_components=4, sample_size=300),
    )
    profile.save(tmp_path / "profile")
    url = f"sqlite:///{tmp_path / 'req.db'}"
    engine = make_engine(url)
    logger = RequestLogger(engine=engine)
    now = datetime.now(UTC)

    def log(n, emb_center, label, hours_ago, prefix):
        emb = _unit(emb_center + 0.5 * rng.standard_normal((n, 16))).astype(np.float16)
        for i in range(n):
            logger.submit(
                {
                    "id": f"{prefix}{i}",
                    "created_at": now - timedelta(hours=hours_ago),
                    "input_text": f"the company said profit rose {i} percent",
                    "embedding": emb[i].tobytes(),
                    "predicted_label": label if i % 2 else "pos",
                    "score": 0.9,
                    "latency_ms": 20.0,
                    "status_code": 200,
                }
            )

    log(200, -center, "neg", 30, "old")  # shifted, yesterday
    log(200, center, "neg", 1, "new")  # in-domain, last hour
    logger.close()
    engine.dispose()
    return tmp_path, url


def test_drift_command_ok_then_alert(setup, capsys):
    tmp, url = setup
    prof = str(tmp / "profile")
    assert _run(["monitor", "drift", "--since", "2h", "--profile", prof, "--db", url]) == 0
    assert "drift: ok (200 requests)" in capsys.readouterr().out
    thresholds = str(_thresholds(tmp))
    code = _run(
        [
            "monitor",
            "drift",
            "--since",
            "48h",
            "--profile",
            prof,
            "--db",
            url,
            "--thresholds",
            thresholds,
        ]
    )
    assert code == 1 and "drift: alert (400 requests)" in capsys.readouterr().out


def _thresholds(tmp):
    path = tmp / "thr.yaml"
    path.write_text("psi_alert: 0.3\nauc_alert: 0.7\n")
    return path


def test_drift_json_output_and_report(setup, capsys):
    tmp, url = setup
    prof = str(tmp / "profile")
    code = _run(["monitor", "drift", "--since", "48h", "--profile", prof, "--db", url, "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc["status"] == "alert" and doc["window_size"] == 400
    assert doc["components"]["domain_classifier"]["value"] > 0.7
    out = tmp / "report.html"
    assert _run(["monitor", "report", "--out", str(out), "--db", url, "--profile", prof]) == 0
    assert out.read_text().count("data:image/png;base64,") == 5


def test_drift_command_errors(setup):
    tmp, url = setup
    with pytest.raises(HonedError, match="--profile"):
        _run(["monitor", "drift", "--db", url])
    with pytest.raises(HonedError, match="bad duration"):
        _run(["monitor", "drift", "--since", "yesterday", "--profile", str(tmp / "profile")])
    bad = tmp / "bad.yaml"
    bad.write_text("psi_warn: 0.5\npsi_alert: 0.2\n")
    with pytest.raises(HonedError, match="psi_alert"):
        _run(
            [
                "monitor",
                "drift",
                "--profile",
                str(tmp / "profile"),
                "--thresholds",
                str(bad),
                "--db",
                url,
            ]
        )


def test_feedback_export_command(setup, capsys):
    tmp, url = setup
    from honed.monitor.feedback import FeedbackStore

    FeedbackStore(url).add({"request_id": "new1", "rating": "down", "correction": "pos"})
    out = tmp / "fb.jsonl"
    assert _run(["feedback", "export", "--out", str(out), "--db", url]) == 0
    row = json.loads(out.read_text())
    assert row["label"] == "pos" and row["request_id"] == "new1"
    assert "classification: 1 rows" in capsys.readouterr().out


def test_parse_duration():
    assert parse_duration("24h") == timedelta(hours=24)
    assert parse_duration("1.5d") == timedelta(hours=36)


def _log_requests(url, n, latency_ms, status_code, error=None):
    """Requests without an input text: they count for the objectives, not for drift."""
    logger = RequestLogger(url)
    for i in range(n):
        logger.submit(
            {
                "id": f"slow{i}",
                "latency_ms": latency_ms,
                "status_code": status_code,
                "error": error,
            }
        )
    logger.close()
    logger.engine.dispose()


def _drift_args(tmp, url):
    return ["monitor", "drift", "--since", "2h", "--profile", str(tmp / "profile"), "--db", url]


def _slo_messages(caplog):
    return [r.getMessage() for r in caplog.records if "slo." in r.getMessage()]


def test_drift_raises_objective_alerts_through_sinks(setup, receiver, caplog, capsys):
    tmp, url = setup
    _log_requests(url, 30, 5000.0, 500, "generation_failed")
    hook, received = receiver
    with caplog.at_level(logging.WARNING, logger="honed.monitor.alerts"):
        code = _run([*_drift_args(tmp, url), "--webhook", hook])
    out = capsys.readouterr().out
    assert code == 1
    assert "drift: ok (200 requests)" in out and "objectives: alert (230 requests)" in out
    assert "latency_p95" in out and "error_rate" in out
    logged = _slo_messages(caplog)
    assert any("slo.latency_p95" in m for m in logged)
    assert any("slo.error_rate" in m for m in logged)
    body = received[0][1]
    assert body["status"] == "alert"
    names = {a["name"] for a in body["alerts"]}
    assert {"slo.latency_p95", "slo.error_rate"} <= names

    assert _run([*_drift_args(tmp, url), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "ok" and doc["combined_status"] == "alert"
    assert doc["objectives"]["breaches"] == ["latency_p95", "latency_p99", "error_rate"]
    assert doc["objectives"]["error_rate"] == pytest.approx(30 / 230)


def test_drift_healthy_window_raises_no_objective_alerts(setup, receiver, caplog, capsys):
    tmp, url = setup
    hook, received = receiver
    with caplog.at_level(logging.WARNING, logger="honed.monitor.alerts"):
        code = _run([*_drift_args(tmp, url), "--webhook", hook])
    assert code == 0 and "objectives: ok (200 requests)" in capsys.readouterr().out
    assert _slo_messages(caplog) == [] and received == []


def test_objectives_from_spec_with_flag_override(setup, capsys):
    tmp, url = setup
    model = tmp / "model"
    shutil.copytree(tmp / "profile", model / PROFILE_DIRNAME)
    (model / "spec.yaml").write_text("monitor:\n  objectives:\n    latency_p95_ms: 10\n")
    base = ["monitor", "drift", "--since", "2h", "--model", str(model), "--db", url]
    assert _run(base) == 1  # 20 ms requests against a 10 ms objective
    assert "latency_p95        ms            20.0  objective 10.0  alert" in capsys.readouterr().out
    assert _run([*base, "--latency-p95-ms", "50", "--latency-p99-ms", "50"]) == 0
    thresholds = tmp / "slo.yaml"
    thresholds.write_text("objectives:\n  min_requests: 1000\n")
    assert _run([*base, "--thresholds", str(thresholds)]) == 0  # too few to judge
    assert "objectives: insufficient_data (200 requests)" in capsys.readouterr().out


def test_objective_flags_are_validated_and_gauges_written(setup, tmp_path):
    tmp, url = setup
    with pytest.raises(HonedError, match=r"--max-error-rate: .*less than or equal to 1"):
        _run([*_drift_args(tmp, url), "--max-error-rate", "2"])
    prom = tmp_path / "metrics" / "honed.prom"
    assert _run([*_drift_args(tmp, url), "--prometheus-textfile", str(prom)]) == 0
    text = prom.read_text()
    assert 'honed_slo_breached{model="",objective="latency_p95"} 0.0' in text
    assert 'honed_drift_overall_status{model=""} 0.0' in text


def test_drift_empty_window_alerts_only_when_traffic_is_expected(setup, capsys):
    tmp, url = setup
    base = ["monitor", "drift", "--since", "1s", "--profile", str(tmp / "profile"), "--db", url]
    assert _run(base) == 0
    assert "drift: insufficient_data (0 requests)" in capsys.readouterr().out
    assert _run([*base, "--expect-traffic"]) == 1
    out = capsys.readouterr().out
    assert "drift: alert (0 requests)" in out and "traffic" in out
