from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from honed.errors import HonedError
from honed.monitor.commands import register
from honed.monitor.profile import ProfileConfig, build_reference_profile
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
