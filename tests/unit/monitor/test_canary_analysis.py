"""Canary analysis over request-log rows written the way the server writes them."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import insert

from honed.monitor.canary import PROMOTE, ROLLBACK, WAIT, analyse_canary
from honed.monitor.commands import register
from honed.monitor.config import CanaryConfig
from honed.monitor.requestlog import FeedbackRow, RequestLogger, RequestStore, make_engine
from honed.spec import RunSpec

LABELS = ["negative", "neutral", "positive"]
NOW = datetime.now(UTC)


class Log:
    """Rows of one served model, written through RequestLogger like the server does."""

    def __init__(self, url: str):
        self.engine = make_engine(url)
        self.logger = RequestLogger(engine=self.engine)
        self.store = RequestStore(engine=self.engine)
        self.rng = np.random.default_rng(0)
        self.count = 0

    def requests(
        self,
        arm,
        n,
        *,
        version="fin/2",
        labels=None,
        errors=0.0,
        latency=20.0,
        ago=timedelta(minutes=30),
        model="fin",
        ids=None,
        texts=None,
    ):
        out = []
        for i in range(n):
            self.count += 1
            rid = ids[i] if ids else f"{arm}-{self.count}"
            failed = self.rng.random() < errors
            label = None if failed else (labels(i) if labels else LABELS[i % 3])
            self.logger.submit(
                {
                    "id": rid,
                    "created_at": NOW - ago + timedelta(milliseconds=i),
                    "model": model,
                    "version": version,
                    "arm": arm,
                    "input_text": texts[i] if texts else f"text {self.count}",
                    "predicted_label": label,
                    "score": None if failed else 0.9,
                    "latency_ms": float(self.rng.gamma(4, latency / 4)),
                    "status_code": 500 if failed else 200,
                }
            )
            out.append(rid)
        self.logger.flush()
        return out

    def feedback(self, ids, *, rating=None, correction=None, signal="explicit"):
        rows = [
            {
                "request_id": rid,
                "item": 0,
                "created_at": NOW - timedelta(minutes=1),
                "rating": {"up": 1, "down": -1}.get(rating or ""),
                "signal": signal,
                "correction": correction,
            }
            for rid in ids
        ]
        with self.engine.begin() as conn:
            conn.execute(insert(FeedbackRow), rows)

    def verdict(self, cfg=None, since=timedelta(hours=1), **kw):
        return analyse_canary(self.store, "fin", NOW - since, cfg or CanaryConfig(**kw))


@pytest.fixture
def log(sqlite_url):
    out = Log(sqlite_url)
    yield out
    out.logger.close()


def _guards(verdict):
    return {g["name"]: g for g in verdict.evidence["guards"]}


def test_waits_until_each_arm_has_enough_requests(log):
    log.requests("primary", 300)
    assert log.verdict().decision == WAIT  # no canary yet
    log.requests("canary", 50, version="fin/3")
    verdict = log.verdict()
    assert verdict.decision == WAIT
    assert "canary: 50 requests < min_requests 200" in verdict.reasons
    assert verdict.evidence["arms"]["canary"]["versions"] == {"fin/3": 50}


def test_equal_arms_promote(log):
    log.requests("primary", 600)
    log.requests("canary", 300, version="fin/3")
    log.feedback([f"canary-{i}" for i in range(601, 611)], rating="up")
    verdict = log.verdict()
    assert verdict.decision == PROMOTE, verdict.reasons
    assert all(g["passed"] in (True, None) for g in verdict.evidence["guards"])
    arms = verdict.evidence["arms"]
    assert arms["primary"]["requests"] == 600 and arms["canary"]["feedback"]["up"] == 10
    assert verdict.evidence["prediction_shift"]["tvd"] < 0.05


def test_errors_roll_back(log):
    log.requests("primary", 400)
    log.requests("canary", 400, version="fin/3", errors=0.05)
    verdict = log.verdict()
    assert verdict.decision == ROLLBACK
    assert _guards(verdict)["error_rate"]["passed"] is False
    assert "error rate" in verdict.reasons[0]


def test_slow_canary_rolls_back_but_a_fast_model_has_slack(log):
    log.requests("primary", 300, latency=100)
    log.requests("canary", 300, version="fin/3", latency=300)
    assert _guards(log.verdict())["latency_p95"]["passed"] is False
    # 2 ms vs 4 ms is a ratio of 2 but within the slack
    assert _guards(log.verdict(latency_slack_ms=1e6))["latency_p95"]["passed"] is True


def test_worse_feedback_rolls_back_only_when_significant(log):
    primary = log.requests("primary", 400)
    canary = log.requests("canary", 400, version="fin/3")
    log.feedback(primary[:8], rating="down")  # 2%
    log.feedback(canary[:12], rating="down")  # 3%: within the 5-point margin
    assert _guards(log.verdict())["feedback"]["passed"] is True
    # corrections that differ from the canary's label and implicit signals count as negative
    log.feedback(canary[100:140], correction="banana")
    log.feedback(canary[200:240], signal="regenerate")
    verdict = log.verdict()
    assert verdict.decision == ROLLBACK
    guard = _guards(verdict)["feedback"]
    assert guard["passed"] is False and guard["value"] == pytest.approx(0.23 - 0.02)
    fb = verdict.evidence["arms"]["canary"]["feedback"]
    assert fb == {"up": 0, "down": 12, "corrections": 40, "regenerate": 40, "abandoned": 0}


def test_prediction_shift_rolls_back(log):
    log.requests("primary", 300)
    log.requests("canary", 300, version="fin/3", labels=lambda i: "positive")
    verdict = log.verdict()
    assert verdict.decision == ROLLBACK
    assert _guards(verdict)["prediction_shift"]["value"] == pytest.approx(2 / 3, abs=0.01)


def test_shadow_agreement(log):
    texts = [f"headline {i}" for i in range(300)]
    ids = log.requests("primary", 300, texts=texts)
    # the shadow answers the same requests (same ids); it agrees on 2 of 3
    log.requests(
        "shadow",
        300,
        version="fin/3",
        ids=ids,
        texts=texts,
        labels=lambda i: LABELS[i % 3] if i % 3 else "positive",
    )
    log.feedback(ids[:30], rating="down")  # about the primary's answers only
    verdict = log.verdict(min_agreement=0.6, max_prediction_shift=0.5)
    assert verdict.evidence["mode"] == "shadow"
    agreement = verdict.evidence["agreement"]
    assert agreement["pairs"] == 300 and agreement["agreement"] == pytest.approx(2 / 3)
    assert verdict.evidence["arms"]["shadow"]["feedback"]["down"] == 0
    assert _guards(verdict)["feedback"]["passed"] is None
    assert verdict.decision == PROMOTE, verdict.reasons
    rolled = log.verdict(min_agreement=0.8, max_prediction_shift=0.5)
    assert rolled.decision == ROLLBACK and "agree on 66.7% of 300" in rolled.reasons[0]


def test_window_and_model_filter(log):
    log.requests("primary", 300)
    log.requests("canary", 300, version="fin/3", errors=0.5, ago=timedelta(hours=3))
    log.requests("canary", 300, version="x/1", errors=0.5, model="other")
    log.requests("canary", 250, version="fin/3")
    verdict = log.verdict()
    assert verdict.evidence["arms"]["canary"]["requests"] == 250
    assert verdict.decision == PROMOTE


def test_cli_exit_codes_and_spec_field(log, sqlite_url, capsys, tmp_path):
    log.requests("primary", 300)
    log.requests("canary", 300, version="fin/3", errors=0.2)
    parser = argparse.ArgumentParser(prog="honed")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["monitor", "canary", "--model", "fin", "--db", sqlite_url])
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert "canary (canary mode, fin): rollback" in out and "[FAIL] error_rate" in out
    thresholds = tmp_path / "canary.yaml"
    thresholds.write_text("min_requests: 1000\n")
    argv = ["monitor", "canary", "--model", "fin", "--db", sqlite_url, "--json"]
    args = parser.parse_args([*argv, "--thresholds", str(thresholds)])
    assert args.func(args) == 75
    assert json.loads(capsys.readouterr().out)["decision"] == "wait"
    spec = RunSpec.model_validate(
        {
            "name": "x",
            "model": {"base": "m"},
            "data": {"source": "d.jsonl"},
            "canary": {"min_requests": 5},
        }
    )
    assert spec.canary.min_requests == 5
