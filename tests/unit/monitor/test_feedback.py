from __future__ import annotations

import json
from collections import Counter

import pytest
from fastapi import FastAPI, Header, HTTPException
from fastapi.testclient import TestClient

from honed.errors import HonedError
from honed.monitor.feedback import (
    FeedbackStore,
    UnknownRequestError,
    build_feedback_router,
    export_training_data,
)
from honed.monitor.requestlog import RequestLogger, make_engine

LABELS = ["negative", "neutral", "positive"]


@pytest.fixture
def logged(db_url):
    engine = make_engine(db_url)
    logger = RequestLogger(engine=engine)
    logger.record_model("sent", "classify", "sent/1", "d1", LABELS)
    logger.submit(
        {
            "id": "c1",
            "model": "sent",
            "digest": "d1",
            "route": "classify",
            "input_text": "Profit fell 5 %",
            "predicted_label": "positive",
        }
    )
    logger.submit({"id": "g1", "input_text": "Summarise: X", "output_text": "bad summary"})
    logger.submit({"id": "g2", "input_text": "Say hi", "output_text": "hi"})
    logger.flush()
    yield engine, logger
    logger.close()
    engine.dispose()


def _app(store, auth=None):
    app = FastAPI()
    app.include_router(build_feedback_router(store, auth_dependency=auth))
    return TestClient(app)


def test_post_feedback_and_404(logged):
    engine, logger = logged
    client = _app(FeedbackStore(engine=engine, logger=logger))
    ok = client.post("/v1/feedback", json={"request_id": "c1", "rating": "down"})
    assert ok.status_code == 201 and ok.json()["request_id"] == "c1"
    missing = client.post("/v1/feedback", json={"request_id": "nope", "rating": "up"})
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    empty = client.post("/v1/feedback", json={"request_id": "c1"})
    assert empty.status_code == 422
    bad = client.post("/v1/feedback", json={"request_id": "c1", "rating": "meh"})
    assert bad.status_code == 422


def test_feedback_finds_request_still_in_logger_queue(sqlite_url):
    engine = make_engine(sqlite_url)
    logger = RequestLogger(engine=engine, flush_interval_s=60, batch_size=1000)
    logger.submit({"id": "late", "input_text": "x"})
    store = FeedbackStore(engine=engine, logger=logger)
    assert store.add({"request_id": "late", "rating": "up"}) >= 1
    logger.close()
    with pytest.raises(UnknownRequestError):
        FeedbackStore(engine=engine).add({"request_id": "never", "rating": "up"})


def test_auth_dependency_applies(logged):
    engine, _ = logged

    def auth(authorization: str | None = Header(None)):
        if authorization != "Bearer t":
            raise HTTPException(401, "no")

    client = _app(FeedbackStore(engine=engine), auth=auth)
    body = {"request_id": "c1", "rating": "up"}
    assert client.post("/v1/feedback", json=body).status_code == 401
    assert (
        client.post("/v1/feedback", json=body, headers={"Authorization": "Bearer t"}).status_code
        == 201
    )


def test_export_rows_dedup_and_provenance(logged, tmp_path):
    engine, _ = logged
    store = FeedbackStore(engine=engine)
    store.add({"request_id": "c1", "rating": "down", "correction": "neutral"})
    store.add({"request_id": "c1", "rating": "down", "correction": "negative"})  # latest wins
    store.add({"request_id": "g1", "rating": "down", "preferred": "good summary"})
    store.add({"request_id": "g1", "rating": "down", "preferred": "good summary"})  # duplicate
    store.add({"request_id": "g2", "rating": "up"})  # no target: nothing to export
    store.add({"request_id": "g2", "signal": "regenerate"})
    written = export_training_data(store, tmp_path / "fb.jsonl")
    assert {k: n for k, (_, n) in written.items()} == {"classification": 1, "sft": 1, "dpo": 1}
    cls = [json.loads(x) for x in (tmp_path / "fb.classification.jsonl").read_text().splitlines()]
    assert cls[0]["text"] == "Profit fell 5 %" and cls[0]["label"] == "negative"
    assert cls[0]["request_id"] == "c1" and cls[0]["feedback_id"] == 2
    dpo = json.loads((tmp_path / "fb.dpo.jsonl").read_text())
    assert dpo["chosen"] == "good summary" and dpo["rejected"] == "bad summary"
    only = export_training_data(store, tmp_path / "pairs.jsonl", kind="dpo")
    assert only["dpo"] == (tmp_path / "pairs.jsonl", 1)


def test_export_without_feedback_is_a_clear_error(logged, tmp_path):
    engine, _ = logged
    with pytest.raises(HonedError, match="no feedback"):
        export_training_data(FeedbackStore(engine=engine), tmp_path / "x.jsonl")


def test_router_without_store_uses_the_apps_request_logger(sqlite_url):
    engine = make_engine(sqlite_url)
    logger = RequestLogger(engine=engine)
    logger.submit({"id": "x1", "input": "hello", "output": "hi"})
    app = FastAPI()
    app.state.request_logger = logger
    app.include_router(build_feedback_router())
    client = TestClient(app)
    res = client.post("/v1/feedback", json={"request_id": "x1", "preferred": "hello!"})
    assert res.status_code == 201, res.text
    assert FeedbackStore(engine=engine).joined()[0]["preferred"] == "hello!"
    logger.close()
    engine.dispose()


def test_implicit_signal(sqlite_url):
    engine = make_engine(sqlite_url)
    logger = RequestLogger(engine=engine)
    logger.submit({"id": "s1", "input": "tell me a joke", "output": "no"})
    store = FeedbackStore(engine=engine, logger=logger)
    store.add_signal("s1", "regenerate")
    assert [r["signal"] for r in store.joined()] == ["regenerate"]
    logger.close()
    engine.dispose()


def test_server_signals_are_queued_with_the_requests(db_url):
    engine = make_engine(db_url)
    logger = RequestLogger(engine=engine, flush_interval_s=60, batch_size=1000)
    logger.submit({"id": "s1", "input": "tell me a joke", "output": "no"})
    assert logger.submit_feedback("s1", "abandoned", detail={"tokens_sent": 3})
    assert logger.submit_feedback("s1", "regenerate", detail={"by_request_id": "s2"})
    assert logger.flush(timeout=30) and logger.stats.written == 3
    rows = FeedbackStore(engine=engine).joined()
    assert [(r["signal"], r["detail"], r["rating"]) for r in rows] == [
        ("abandoned", {"tokens_sent": 3}, None),
        ("regenerate", {"by_request_id": "s2"}, None),
    ]
    logger.close()
    engine.dispose()


def test_summary_counts_implicit_signals_apart_and_export_skips_them(logged, tmp_path):
    from honed.monitor.feedback import feedback_summary

    engine, _ = logged
    store = FeedbackStore(engine=engine)
    store.add({"request_id": "g1", "rating": "down", "preferred": "good summary"})
    store.add({"request_id": "g2", "rating": "up"})
    store.add_signal("g1", "regenerate", detail={"by_request_id": "g9"})
    store.add_signal("g2", "abandoned", detail={"tokens_sent": 2})
    # a client may post an implicit signal itself; a correction on it is still not exported
    store.add({"request_id": "c1", "signal": "regenerate", "correction": "negative"})
    summary = feedback_summary(store.joined(), n_requests=3)
    assert summary["explicit"] == {"n": 2, "up": 1, "down": 1, "correction": 1, "comment": 0}
    assert summary["implicit"] == {"regenerate": 2, "abandoned": 1}
    assert summary["rates"]["regenerate"] == pytest.approx(2 / 3)
    written = export_training_data(store, tmp_path / "fb.jsonl")
    assert {k: n for k, (_, n) in written.items()} == {"sft": 1, "dpo": 1}
    only_implicit = FeedbackStore(engine=make_engine(f"sqlite:///{tmp_path / 'x.db'}"))
    other = RequestLogger(engine=only_implicit.engine)
    other.submit({"id": "q", "input": "x", "output": "y"})
    other.submit_feedback("q", "abandoned")
    other.close()
    with pytest.raises(HonedError, match="no feedback"):
        export_training_data(only_implicit, tmp_path / "none.jsonl")
    only_implicit.engine.dispose()


def test_existing_database_gains_the_detail_column(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the feedback table as created before `detail`
        conn.execute(
            "CREATE TABLE honed_feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "request_id VARCHAR(64), item INTEGER, created_at DATETIME, rating INTEGER, "
            "signal VARCHAR(32), correction TEXT, preferred TEXT, comment TEXT)"
        )
        conn.execute(
            "INSERT INTO honed_feedback (request_id, item, created_at, signal, rating) "
            "VALUES ('old', 0, '2024-01-01 00:00:00', 'explicit', 1)"
        )
    engine = make_engine(f"sqlite:///{path}")
    logger = RequestLogger(engine=engine)
    logger.submit({"id": "old", "input": "x", "output": "y"})
    logger.submit_feedback("old", "abandoned", detail={"tokens_sent": 1})
    logger.close()
    rows = FeedbackStore(engine=engine).joined()
    assert [(r["signal"], r["detail"]) for r in rows] == [
        ("explicit", None),
        ("abandoned", {"tokens_sent": 1}),
    ]
    make_engine(f"sqlite:///{path}").dispose()  # a second start finds the column there
    engine.dispose()


def _feedback(store, **body):
    from honed.monitor.feedback import InvalidFeedbackError

    try:
        return store.add(body)
    except InvalidFeedbackError as err:
        return err


def test_corrections_must_be_labels_of_the_version_that_answered(db_url):
    from honed.monitor.feedback import InvalidFeedbackError

    engine = make_engine(db_url)
    logger = RequestLogger(engine=engine)
    # two versions of one model name with different label sets; each answered one request
    logger.record_model("sent", "classify", "sent/1", "d1", LABELS)
    logger.record_model("sent", "classify", "sent/2", "d2", ["bad", "good"])
    for rid, digest in (("r1", "d1"), ("r2", "d2")):
        for item in (0, 1):
            row = {"id": rid, "item": item, "model": "sent", "digest": digest}
            logger.submit({**row, "route": "classify", "input": f"t{item}", "label": "x"})
    store = FeedbackStore(engine=engine, logger=logger)
    banana = _feedback(store, request_id="r1", correction="banana")
    assert isinstance(banana, InvalidFeedbackError) and banana.param == "correction"
    assert "'banana'" in str(banana) and "'negative', 'neutral', 'positive'" in str(banana)
    assert isinstance(_feedback(store, request_id="r1", correction="good"), InvalidFeedbackError)
    assert isinstance(_feedback(store, request_id="r2", preferred="neutral"), InvalidFeedbackError)
    assert isinstance(_feedback(store, request_id="r1", correction=" "), InvalidFeedbackError)
    beyond = _feedback(store, request_id="r1", item=2, correction="neutral")
    assert isinstance(beyond, InvalidFeedbackError) and beyond.param == "item"
    assert "2 item(s)" in str(beyond)
    with pytest.raises(UnknownRequestError):
        store.add({"request_id": "r9", "rating": "up"})
    assert isinstance(_feedback(store, request_id="r1", item=1, correction=" neutral "), int)
    assert isinstance(_feedback(store, request_id="r2", correction="good"), int)
    stored = store.joined()
    assert [(f["request_id"], f["item"], f["correction"]) for f in stored] == [
        ("r1", 1, "neutral"),  # stored as the label, stripped
        ("r2", 0, "good"),
    ]
    logger.close()
    engine.dispose()


def test_generator_feedback_needs_text(logged):
    from honed.monitor.feedback import InvalidFeedbackError

    engine, logger = logged
    store = FeedbackStore(engine=engine, logger=logger)
    for field in ("correction", "preferred"):
        err = _feedback(store, request_id="g1", **{field: " \n\t"})
        assert isinstance(err, InvalidFeedbackError) and err.param == field
        assert "non-empty text" in str(err)
    assert isinstance(_feedback(store, request_id="g1", preferred="a real summary"), int)


def test_labels_fall_back_to_the_serving_engine(sqlite_url):
    engine = make_engine(sqlite_url)
    logger = RequestLogger(engine=engine)  # a version never recorded in the table
    logger.submit({"id": "c", "model": "m", "digest": "d", "route": "classify", "label": "a"})
    seen = []

    def labels(model, digest):
        seen.append((model, digest))
        return ["a", "b"] if (model, digest) == ("m", "d") else None

    store = FeedbackStore(engine=engine, logger=logger, labels=labels)
    assert isinstance(_feedback(store, request_id="c", correction="b"), int)
    assert "'a', 'b'" in str(_feedback(store, request_id="c", correction="z"))
    # without either: the labels the model predicted in the log (rows from before label sets)
    observed = _feedback(FeedbackStore(engine=engine), request_id="c", correction="b")
    assert "allowed values: 'a'" in str(observed)
    logger.submit({"id": "e", "model": "m2", "route": "classify", "status": 500})
    unknown = _feedback(FeedbackStore(engine=engine, logger=logger), request_id="e", correction="b")
    assert "not known" in str(unknown)
    assert seen[0] == ("m", "d")
    logger.close()
    engine.dispose()


def test_shadow_rows_are_not_the_answer(sqlite_url):
    """A canary's shadow arm logs its own answer under the same id; feedback is about the
    answer the client saw."""
    engine = make_engine(sqlite_url)
    logger = RequestLogger(engine=engine)
    logger.record_model("sent", "classify", "sent/1", "d1", LABELS)
    logger.record_model("sent", "classify", "sent/2", "d2", ["bad", "good"])
    base = {"id": "s", "model": "sent", "route": "classify", "input": "t", "item": 0}
    logger.submit({**base, "digest": "d1", "arm": "primary", "label": "neutral"})
    logger.submit({**base, "digest": "d2", "arm": "shadow", "label": "good"})
    store = FeedbackStore(engine=engine, logger=logger)
    assert "allowed values: 'negative'" in str(_feedback(store, request_id="s", correction="good"))
    store.add({"request_id": "s", "correction": "positive"})
    assert [(f["req_label"], f["correction"]) for f in store.joined()] == [("neutral", "positive")]
    logger.close()
    engine.dispose()


def test_export_checks_rows_stored_before_feedback_was_checked(sqlite_url, tmp_path):
    from sqlalchemy import insert

    from honed.monitor.requestlog import FeedbackRow, utcnow

    engine = make_engine(sqlite_url)
    logger = RequestLogger(engine=engine)
    # an old log: no digests, no recorded label sets; the model predicted these labels
    for i, label in enumerate(["negative", "positive", "neutral"]):
        logger.submit({"id": f"o{i}", "model": "sent", "input": f"text {i}", "label": label})
    logger.close()
    old = [("o0", 0, "positive"), ("o1", 0, "banana"), ("o2", 0, " "), ("gone", 0, "neutral")]
    old.append(("o2", 5, "neutral"))  # an item the request never had
    with engine.begin() as conn:
        conn.execute(
            insert(FeedbackRow),
            [
                {"request_id": r, "item": i, "created_at": utcnow(), "signal": "explicit"}
                | {"correction": c}
                for r, i, c in old
            ],
        )
    skipped = Counter()
    written = export_training_data(
        FeedbackStore(engine=engine), tmp_path / "fb.jsonl", "auto", None, skipped
    )
    rows = [json.loads(x) for x in (tmp_path / "fb.jsonl").read_text().splitlines()]
    assert written["classification"][1] == 1
    assert [(r["text"], r["label"]) for r in rows] == [("text 0", "positive")]
    assert skipped == {"not a label of the model that answered": 1, "request not in the log": 2}
    # with the version's label set recorded, that set decides
    RequestLogger(engine=engine).close()
    from honed.monitor.requestlog import save_model_version

    row = {"model": "sent", "version": "sent/1", "digest": None, "kind": "classify"}
    save_model_version(engine, {**row, "labels": ["negative", "positive", "neutral", "banana"]})
    skipped = Counter()
    export_training_data(FeedbackStore(engine=engine), tmp_path / "b.jsonl", skipped=skipped)
    labels = [json.loads(x)["label"] for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert labels == ["positive", "banana"] and skipped == {"request not in the log": 2}
    with engine.begin() as conn:
        conn.execute(FeedbackRow.__table__.delete().where(FeedbackRow.correction != "banana"))
    save_model_version(engine, {**row, "labels": LABELS})
    with pytest.raises(HonedError, match="1 skipped: not a label"):
        export_training_data(FeedbackStore(engine=engine), tmp_path / "c.jsonl")
    engine.dispose()
