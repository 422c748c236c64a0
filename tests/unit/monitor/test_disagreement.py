"""Flagging a key whose label corrections disagree with everyone else's before export."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from honed.monitor.disagreement import TrustRule, judge_keys
from honed.monitor.feedback import HELD_BACK, FeedbackStore, export_training_data
from honed.monitor.requestlog import RequestLogger, make_engine

LABELS = ["negative", "neutral", "positive"]
HONEST = [f"user{i}" for i in range(5)]


def _traffic(seed: int, flips: int = 40) -> list[dict]:
    """Requests with feedback: 5 honest keys (60 each: a thumbs-up when the model was right,
    else the true label, 5% slips) and one key flipping the label of ``flips`` requests, all
    on texts from one pool of 100 (so keys meet on the same texts). The model is right 80%."""
    rng = random.Random(seed)
    texts = [(f"Headline number {i} about  the Market", rng.choice(LABELS)) for i in range(100)]
    out = []
    for key in [*HONEST, "mallory"]:
        for j in range(flips if key == "mallory" else 60):
            text, truth = rng.choice(texts)
            wrong = [lab for lab in LABELS if lab != truth]
            predicted = truth if rng.random() < 0.8 else rng.choice(wrong)
            fb: dict = {"rating": "up"} if predicted == truth else {"correction": truth}
            if key == "mallory" or rng.random() < 0.05:
                fb = {"correction": rng.choice(wrong)}
            rid = f"{key}-{j}"
            req = {"id": rid, "key_name": key, "model": "sent", "digest": "d1"}
            req |= {"route": "classify", "input_text": text.upper(), "predicted_label": predicted}
            out.append((req, {"request_id": rid, **fb}))
    return out


def _store(url: str, seed: int = 0, flips: int = 40) -> FeedbackStore:
    engine = make_engine(url)
    logger = RequestLogger(engine=engine)
    logger.record_model("sent", "classify", "sent/1", "d1", LABELS)
    traffic = _traffic(seed, flips)
    for req, _ in traffic:
        logger.submit(req)
    logger.close()
    store = FeedbackStore(engine=engine)
    for req, fb in traffic:
        store.add(fb, key_name=req["key_name"])
    return store


@pytest.mark.parametrize("seed", range(5))
def test_one_key_flipping_labels_is_flagged_and_honest_keys_are_not(sqlite_url, seed):
    store = _store(sqlite_url, seed)
    judged = {t.key: t for t in judge_keys(store.joined())}
    assert set(judged) == {*HONEST, "mallory"}
    assert [k for k, t in judged.items() if t.flagged] == ["mallory"]
    bad = judged["mallory"]
    assert bad.consensus.flagged
    assert bad.consensus.rate > 0.9 and all(judged[k].consensus.rate < 0.3 for k in HONEST)
    store.engine.dispose()


def test_export_holds_the_flagged_key_back_and_reports_it(sqlite_url, tmp_path):
    store = _store(sqlite_url)
    report: dict = {}
    skipped: Counter = Counter()
    out = tmp_path / "fb.jsonl"
    export_training_data(store, out, "classification", skipped=skipped, report=report)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert not any(r["request_id"].startswith("mallory") for r in rows)
    assert skipped[HELD_BACK] == 40 and report["held_back"] == 40
    assert report["flagged_keys"] == [{"key": "mallory", "rows": 40, "held_back": 40}]
    assert {k["key"] for k in report["keys"]} == {*HONEST, "mallory"}
    kept = {}
    export_training_data(store, out, "classification", hold_flagged=False, report=kept)
    assert any(json.loads(x)["request_id"].startswith("mallory") for x in out.open())
    assert kept["held_back"] == 0 and kept["flagged_keys"][0]["held_back"] == 0
    store.engine.dispose()


def test_too_few_rows_are_not_judged(sqlite_url):
    store = _store(sqlite_url, flips=5)
    judged = {t.key: t for t in judge_keys(store.joined(), TrustRule(min_rows=10))}
    assert not judged["mallory"].flagged and judged["mallory"].consensus.n < 10
    store.engine.dispose()


def test_feedback_without_keys_is_not_judged():
    rows = [
        {"key_name": None, "signal": "explicit", "req_route": "classify", "req_label": "a"}
        | {"correction": "b", "req_input": "x", "request_id": str(i), "item": 0}
        for i in range(50)
    ]
    assert judge_keys(rows) == []


def _rows(key: str, pairs: list[tuple[str, str, str]]) -> list[dict]:
    """Joined-feedback-like rows of ``key``: (text, label it gave, model's label)."""
    return [
        {"key_name": key, "request_id": f"{key}{i}", "item": 0, "signal": "explicit"}
        | {"req_route": "classify", "req_input": text, "req_label": predicted}
        | {"correction": label, "rating": None}
        for i, (text, label, predicted) in enumerate(pairs)
    ]


def test_model_is_the_reference_only_where_no_peer_labelled_the_text():
    # Peers: 3 keys agreeing with the model on texts t0..t29; an expert only correcting the
    # model's errors on those same texts (its peers agree with it); a flipper on its own texts.
    rows = []
    for k in ("a", "b", "c"):
        rows += _rows(k, [(f"t{i}", "pos", "pos") for i in range(30)])
    rows += _rows("d", [(f"t{i}", "neg", "pos") for i in range(30, 45)])
    rows += _rows("expert", [(f"t{i}", "neg", "pos") for i in range(30, 45)])
    rows += _rows("flipper", [(f"own{i}", "neg", "pos") for i in range(20)])
    judged = {t.key: t for t in judge_keys(rows)}
    assert judged["expert"].consensus.rate == 0 and judged["expert"].model.n == 0
    assert [k for k, t in judged.items() if t.flagged] == ["flipper"]
    assert judged["flipper"].model.flagged and judged["flipper"].consensus.n == 0
