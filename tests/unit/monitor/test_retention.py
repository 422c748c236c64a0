"""Request-log retention: `prune`, `honed logs prune`, and the server's background task, on
SQLite and PostgreSQL (``db_url``). Feedback goes with its request; the export keeps working."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select

from honed.cli import main
from honed.monitor.feedback import FeedbackStore, export_training_data
from honed.monitor.requestlog import (
    DriftCheckRow,
    FeedbackRow,
    ModelVersionRow,
    RequestLogger,
    RequestRow,
    RequestStore,
    make_engine,
    prune,
    retention_loop,
    utcnow,
)

OLD, NEW = 40, 2  # days ago


def _count(engine, table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.fixture
def log(db_url):
    """12 requests 40 days old (g0..g11, one with feedback), 3 from 2 days ago (n0..n2, one
    with feedback), an orphan feedback row 40 days old, a model version and a drift check."""
    engine = make_engine(db_url)
    logger = RequestLogger(engine=engine)
    logger.record_model("gen", "generate", "gen/1", "d1")
    now = utcnow()
    for i in range(12):
        at = now - timedelta(days=OLD, minutes=i)
        logger.submit(
            {"id": f"g{i}", "input_text": f"old {i}", "output_text": "x", "created_at": at}
        )
    for i in range(3):
        at = now - timedelta(days=NEW, minutes=i)
        logger.submit(
            {"id": f"n{i}", "input_text": f"new {i}", "output_text": "y", "created_at": at}
        )
    assert logger.flush()
    store = FeedbackStore(engine=engine)
    store.add({"request_id": "g3", "preferred": "old better"})
    store.add({"request_id": "n1", "preferred": "new better"})
    with engine.begin() as conn:
        orphan = {"request_id": "gone", "item": 0, "signal": "explicit", "rating": 1}
        conn.execute(insert(FeedbackRow), [{**orphan, "created_at": now - timedelta(days=OLD)}])
    RequestStore(engine=engine).save_drift_check({"status": "ok"})
    yield engine
    logger.close()
    engine.dispose()


def test_prune_deletes_old_requests_their_feedback_and_old_feedback_in_batches(log):
    done = prune(log, 30, batch_size=5)  # 12 old requests: batches of 5, 5, 2
    assert (done.requests, done.feedback) == (12, 2)  # g3's feedback and the orphan
    with log.connect() as conn:
        ids = sorted(r[0] for r in conn.execute(select(RequestRow.id)))
        feedback = [r[0] for r in conn.execute(select(FeedbackRow.request_id))]
    assert ids == ["n0", "n1", "n2"] and feedback == ["n1"]
    # No user text, read by reports: kept.
    assert _count(log, ModelVersionRow) == 1 and _count(log, DriftCheckRow) == 1
    assert prune(log, 30).requests == 0  # idempotent


def test_the_feedback_export_still_works_after_a_prune(log, tmp_path):
    prune(log, 30)
    store = FeedbackStore(engine=log)
    assert store.orphans() == 0  # nothing left that the export would count as skipped
    written = export_training_data(store, tmp_path / "fb.jsonl", kind="sft")
    path, n = written["sft"]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert n == 1 and rows[0]["prompt"] == "new 1" and rows[0]["completion"] == "new better"


def test_honed_logs_prune(log, db_url, capsys, monkeypatch):
    monkeypatch.delenv("HONED_SERVE_REQUEST_LOG_RETENTION_DAYS", raising=False)
    assert main(["logs", "prune", "--db", db_url]) == 2
    assert "--older-than DAYS" in capsys.readouterr().err
    assert main(["logs", "prune", "--older-than", "0", "--db", db_url]) == 2
    assert main(["logs", "prune", "--older-than", "50", "--db", db_url]) == 0
    assert "pruned 0 requests and 0 feedback rows older than 50 days" in capsys.readouterr().out
    monkeypatch.setenv("HONED_SERVE_REQUEST_LOG_RETENTION_DAYS", "30")  # the server's setting
    assert main(["logs", "prune", "--db", db_url]) == 0
    assert "pruned 12 requests and 2 feedback rows older than 30 days" in capsys.readouterr().out
    assert _count(log, RequestRow) == 3


def test_retention_loop_prunes_at_once_then_every_interval(log):
    async def go():
        task = asyncio.create_task(retention_loop(log, 30, interval_s=0.05))
        for _ in range(200):  # the first round runs at once, on a worker thread
            if _count(log, RequestRow) == 3:
                break
            await asyncio.sleep(0.05)
        # a new old row is picked up by a later round
        logger = RequestLogger(engine=log)
        logger.submit({"id": "late", "created_at": utcnow() - timedelta(days=OLD)})
        assert logger.flush()
        logger.close()
        for _ in range(200):
            if _count(log, RequestRow) == 3:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())
    assert _count(log, RequestRow) == 3


def test_the_server_prunes_in_the_background(log, db_url):
    from honed.serve.http.app import create_app
    from honed.serve.settings import ServeSettings

    settings = ServeSettings(
        models=[], request_log_url=db_url, request_log_retention_days=30, redact_pii=False
    )
    app = create_app(settings)

    async def go():
        async with app.router.lifespan_context(app):
            for _ in range(600):
                if _count(log, RequestRow) == 3:
                    return True
                await asyncio.sleep(0.05)
        return False

    assert asyncio.run(go()), "the server did not prune within 30 s"
