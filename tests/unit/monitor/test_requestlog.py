from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta

import pytest

from honed.monitor.requestlog import RequestLogger, RequestStore, make_engine, normalise_record


def _record(i: int, **kw):
    base = {
        "id": f"r{i}",
        "model": "m",
        "route": "/v1/classify",
        "latency_ms": 10.0 + i,
        "prompt_tokens": 5,
        "completion_tokens": 1,
        "input_text": f"text {i} mail me at a@b.com",
        "output_text": "positive",
        "predicted_label": "positive",
        "score": 0.9,
        "status_code": 200,
    }
    base.update(kw)
    return base


def test_logger_writes_all_records_and_redacts(db_url):
    engine = make_engine(db_url)
    logger = RequestLogger(
        engine=engine, redact=lambda t: t.replace("a@b.com", "[EMAIL]"), batch_size=16
    )
    for i in range(100):
        assert logger.submit(_record(i, trace="x"))
    assert logger.flush(10)
    logger.close()
    rows = RequestStore(engine=engine).fetch()
    assert len(rows) == 100
    assert logger.stats.written == 100 and logger.stats.dropped == 0
    assert all("[EMAIL]" in r["input_text"] and "a@b.com" not in r["input_text"] for r in rows)
    assert rows[0]["extra"] == {"trace": "x"}  # unknown keys kept, not lost
    engine.dispose()


def test_fetch_filters_by_time_and_model(db_url):
    engine = make_engine(db_url)
    store = RequestStore(engine=engine)
    now = datetime.now(UTC)
    logger = RequestLogger(engine=engine)
    logger.submit(_record(1, created_at=now - timedelta(hours=30)))
    logger.submit(_record(2, created_at=now - timedelta(hours=1)))
    logger.submit(_record(3, created_at=now - timedelta(minutes=5), model="other"))
    logger.close()
    recent = store.fetch(since=now - timedelta(hours=24))
    assert [r["id"] for r in recent] == ["r2", "r3"]
    assert [r["id"] for r in store.fetch(since=now - timedelta(hours=24), model="m")] == ["r2"]
    assert store.exists("r1") and not store.exists("nope")
    assert store.get("r3")["model"] == "other"
    engine.dispose()


def test_submit_never_blocks_and_counts_drops(sqlite_url):
    engine = make_engine(sqlite_url)
    # The writer waits for 1000 records or 60 s, so nothing leaves the 10-slot queue while we
    # submit: a blocking submit would hang here (pytest-timeout), a non-blocking one drops.
    logger = RequestLogger(engine=engine, queue_size=10, batch_size=1000, flush_interval_s=60)
    accepted = sum(logger.submit(_record(i)) for i in range(1000))
    assert accepted == 10 and logger.stats.dropped == 990
    logger.close()
    assert len(RequestStore(engine=engine).fetch()) == accepted
    engine.dispose()


def test_bad_record_is_counted_and_spares_the_batch(sqlite_url):
    engine = make_engine(sqlite_url)

    def redact(text):
        if text == "boom":
            raise ValueError("redactor broke")
        return text

    logger = RequestLogger(engine=engine, redact=redact)
    logger.submit(_record(1, input_text="boom"))
    logger.submit(_record(2))
    logger.flush(10)
    logger.close()
    assert logger.stats.failed == 1 and logger.stats.written == 1
    engine.dispose()


def test_batch_request_items_and_server_aliases(db_url):
    """The server's tracker logs one record per item of a batch request under one id, with
    short keys (input/output/label/score/status)."""
    engine = make_engine(db_url)
    logger = RequestLogger(engine=engine)
    for text, label in [("a", "pos"), ("b", "neg")]:
        logger.submit(
            {
                "id": "cls-1",
                "input": text,
                "output": label,
                "label": label,
                "score": 0.9,
                "status": 200,
                "route": "/v1/classify",
            }
        )
    logger.submit({"id": "chat-1", "input": [{"role": "user", "content": "hi"}], "status": 200})
    logger.close()
    rows = RequestStore(engine=engine).fetch()
    assert [(r["id"], r["item"], r["predicted_label"]) for r in rows] == [
        ("cls-1", 0, "pos"),
        ("cls-1", 1, "neg"),
        ("chat-1", 0, None),
    ]
    assert rows[0]["status_code"] == 200 and rows[0]["input_text"] == "a" and not rows[0]["extra"]
    assert '"content": "hi"' in rows[2]["input_text"]
    engine.dispose()


def test_bad_record_type_is_rejected(sqlite_url):
    logger = RequestLogger(sqlite_url)
    with pytest.raises(TypeError, match="must be a dict"):
        logger.submit(["not", "a", "dict"])
    logger.close()


def test_normalise_fills_id_and_time():
    row = normalise_record({"input_text": "x", "created_at": 0})
    assert len(row["id"]) == 32 and row["created_at"].year == 1970


def test_crash_loses_at_most_the_unflushed_queue(tmp_path):
    """A process killed without close(): everything flushed survives; the loss is bounded by
    what was still queued (here: the records submitted after the last flush)."""
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    script = textwrap.dedent(
        f"""
        import os
        from honed.monitor.requestlog import RequestLogger
        lg = RequestLogger({url!r}, batch_size=50, flush_interval_s=5.0)
        for i in range(300):
            lg.submit({{"id": str(i), "input_text": "x"}})
        assert lg.flush(20)
        for i in range(300, 400):
            lg.submit({{"id": str(i), "input_text": "x"}})
        print(lg.pending, flush=True)
        os._exit(0)  # a crash: no close(), no atexit
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    engine = make_engine(url)
    stored = len(RequestStore(engine=engine).fetch(columns=["id"]))
    lost = 400 - stored
    assert stored >= 300  # flushed records survive the crash
    assert lost <= 100  # at most the queue after the last flush
    engine.dispose()


def test_batch_with_different_fields_per_record(sqlite_url):
    engine = make_engine(sqlite_url)
    logger = RequestLogger(engine=engine)
    logger.submit({"id": "a", "input_text": "x", "predicted_label": "p"})
    logger.submit({"id": "b", "output_text": "y"})
    logger.close()
    assert logger.stats.written == 2
    engine.dispose()
