"""Every response carries an id (`X-Request-Id`, and the body's `id` where the shape has one),
the same id is the request-log row's, and the row says which version answered. Hostile input
gets a 4xx with an id and a log row, never a 500."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.serve._serve_support import run_app

from honed.monitor.requestlog import RequestStore, latest_model_version
from honed.serve.http.auth import hash_key
from honed.serve.settings import ApiKeyEntry, ServeSettings

openai = pytest.importorskip("openai")
HELLO = [{"role": "user", "content": "hello"}]
LABELS = ["negative", "neutral", "positive"]


def _settings(tmp_path, models: list[str], **over: Any) -> ServeSettings:
    url = f"sqlite:///{tmp_path / 'requests.db'}"
    return ServeSettings(models=models, max_wait_ms=2.0, request_log_url=url, **over)


def _rows(settings: ServeSettings) -> dict[str, list[dict]]:
    """Logged rows by request id."""
    out: dict[str, list[dict]] = {}
    for row in RequestStore(settings.request_log_url).fetch():
        out.setdefault(row["id"], []).append(row)
    return out


def test_openai_client_sees_the_id_of_the_log_row(tiny, tmp_path):
    settings = _settings(tmp_path, [str(tiny["base"]), f"sent={tiny['clf']}"])

    async def go(http, app):
        client = openai.AsyncOpenAI(
            base_url="http://test/v1", api_key="unused", http_client=http, max_retries=0
        )
        chat = client.chat.completions
        raw = await chat.with_raw_response.create(model="base", messages=HELLO, max_tokens=3)
        answer = raw.parse()
        assert raw.headers["x-request-id"] == answer.id and answer.id.startswith("chatcmpl-")
        streamed = await chat.with_raw_response.create(
            model="base", messages=HELLO, max_tokens=3, stream=True
        )
        stream_id = streamed.headers["x-request-id"]
        assert {chunk.id async for chunk in streamed.parse()} == {stream_id}
        with pytest.raises(openai.NotFoundError) as missing:
            await chat.create(model="nope", messages=HELLO, max_tokens=3)
        # A client-sent id is kept, in the header and in the classify body.
        cls = await http.post(
            "/v1/classify",
            json={"model": "sent", "input": ["up", "down"]},
            headers={"X-Request-Id": "order-42.a"},
        )
        assert cls.headers["x-request-id"] == cls.json()["id"] == "order-42.a"
        assert app.state.request_logger.flush(timeout=30)
        engine = app.state.engine
        return answer.id, stream_id, missing.value.request_id, engine

    chat_id, stream_id, missing_id, engine = run_app(settings, go)
    rows = _rows(settings)
    digest = engine.generator.digest
    assert len(digest) == 16 and int(digest, 16) >= 0
    for rid in (chat_id, stream_id):
        (row,) = rows[rid]
        assert (row["status_code"], row["version"], row["digest"], row["arm"]) == (
            200,
            None,  # a folder, not a registry version
            digest,
            "primary",
        )
    (missing,) = rows[missing_id]
    assert missing["status_code"] == 404 and missing["digest"] is None
    classified = rows["order-42.a"]
    clf = engine.classifiers["sent"]
    assert clf.labels == LABELS and clf.arm == "primary"
    assert [r["item"] for r in classified] == [0, 1]
    assert {r["digest"] for r in classified} == {clf.digest} != {digest}


BAD_IDS = [b"x" * 65, b"has space", b"tab\there", "caf\u00e9".encode("latin-1"), b""]


def test_hostile_requests_get_an_id_and_a_log_row(tiny, tmp_path):
    settings = _settings(tmp_path, [f"sent={tiny['clf']}"], max_body_bytes=2048)

    def explode(ctx):
        if "boom" in ctx.texts:
            raise RuntimeError("a bug in a guard")

    def setup(app):
        app.state.input_guards.append(explode)

    async def go(c, app):
        ok = {"model": "sent", "input": "fine"}
        answers = {
            "unknown model": await c.post("/v1/classify", json={"model": "x", "input": "a"}),
            "bad field": await c.post("/v1/classify", json={"model": "sent", "input": 3}),
            "bad json": await c.post(
                "/v1/classify", content=b"{nope", headers={"Content-Type": "application/json"}
            ),
            "too large": await c.post("/v1/classify", json={"model": "sent", "input": "x" * 4000}),
            "form body": await c.post("/v1/classify", content=b"a=b"),
            "server bug": await c.post("/v1/classify", json={"model": "sent", "input": "boom"}),
        }
        kept = "k" * 64
        same = await c.post("/v1/classify", json=ok, headers={"X-Request-Id": kept})
        fresh = [
            await c.post("/v1/classify", json=ok, headers={"X-Request-Id": bad}) for bad in BAD_IDS
        ]
        nowhere = await c.get("/no/such/route")
        assert app.state.request_logger.flush(timeout=30)
        return answers, same, fresh, nowhere

    answers, same, fresh, nowhere = run_app(settings, go, setup)
    statuses = {why: r.status_code for why, r in answers.items()}
    assert statuses == {
        "unknown model": 404,
        "bad field": 400,
        "bad json": 400,
        "too large": 413,
        "form body": 415,
        "server bug": 500,
    }
    rows = _rows(settings)
    for why, r in answers.items():
        rid = r.headers["x-request-id"]
        assert set(r.json()) == {"error"}, why  # OpenAI's envelope, unchanged
        assert [row["status_code"] for row in rows[rid]] == [r.status_code], why
    assert same.headers["x-request-id"] == same.json()["id"] == "k" * 64
    for bad, r in zip(BAD_IDS, fresh, strict=True):
        assert r.status_code == 200 and r.headers["x-request-id"].encode() != bad
        assert r.headers["x-request-id"] == r.json()["id"] and r.json()["id"] in rows
    assert nowhere.status_code == 404 and nowhere.headers["x-request-id"]
    assert nowhere.headers["x-request-id"] not in rows  # not an inference route


def test_refused_keys_get_an_id_and_a_log_row(tiny, tmp_path):
    keys = [ApiKeyEntry(name="app", sha256=hash_key("hk-secret"), scopes=["infer"])]
    settings = _settings(tmp_path, [f"sent={tiny['clf']}"], api_keys=keys)

    async def go(c, app):
        body = {"model": "sent", "input": "hi"}
        refused = await c.post("/v1/classify", json=body, headers={"X-Request-Id": "mine"})
        wrong = await c.post("/v1/classify", json=body, headers={"Authorization": "Bearer no"})
        assert app.state.request_logger.flush(timeout=30)
        return refused, wrong

    refused, wrong = run_app(settings, go)
    assert refused.status_code == wrong.status_code == 401
    assert refused.headers["x-request-id"] == "mine"
    rows = _rows(settings)
    assert rows["mine"][0]["status_code"] == 401
    assert rows[wrong.headers["x-request-id"]][0]["route"] == "classify"


def test_registry_version_is_logged_and_feedback_is_checked(tiny, tmp_path, monkeypatch):
    from honed.registry import store

    folder = tiny["clf"]
    monkeypatch.setattr(store, "resolve_ref_version", lambda ref, cfg=None: (folder, "sent/3"))
    settings = _settings(tmp_path, ["sent/3"])

    async def go(c, app):
        r = await c.post("/v1/classify", json={"model": "sent", "input": ["a", "b"]})
        rid = r.json()["id"]

        async def feedback(**body):
            return await c.post("/v1/feedback", json={"request_id": rid, **body})

        answers = {
            "banana": await feedback(correction="banana"),
            "blank": await feedback(correction="  "),
            "item 2": await feedback(item=2, correction="neutral"),
            "unknown": await c.post("/v1/feedback", json={"request_id": "x", "rating": "up"}),
            "good": await feedback(item=1, correction=" neutral "),
        }
        metrics = (await c.get("/metrics")).text
        return rid, answers, metrics

    rid, answers, metrics = run_app(settings, go)
    statuses = {why: r.status_code for why, r in answers.items()}
    assert statuses == {"banana": 422, "blank": 422, "item 2": 422, "unknown": 404, "good": 201}
    message = answers["banana"].json()["error"]["message"]
    assert "'banana'" in message and all(repr(x) in message for x in LABELS)
    assert "sent/3" in message
    assert "out of range" in answers["item 2"].json()["error"]["message"]
    assert all(r.headers["x-request-id"] for r in answers.values())
    assert 'version="sent/3"' in metrics
    rows = _rows(settings)[rid]
    assert {(r["version"], r["arm"]) for r in rows} == {("sent/3", "primary")}
    recorded = latest_model_version(RequestStore(settings.request_log_url).engine, "sent", None)
    assert recorded["version"] == "sent/3" and recorded["labels"] == LABELS
    assert recorded["digest"] == rows[0]["digest"] and recorded["kind"] == "classify"

    from honed.monitor.feedback import FeedbackStore

    stored = FeedbackStore(settings.request_log_url).joined()
    assert [(f["item"], f["correction"]) for f in stored] == [(1, "neutral")]


def test_a_folder_has_no_registry_version(tiny):
    from honed.registry.store import resolve_ref_version
    from honed.serve.engine import loading

    folder = tiny["clf"]
    assert resolve_ref_version(str(folder)) == (folder.resolve(), None)
    ref = loading.parse_entry(f"sent={folder}")
    assert (ref.version, ref.kind) == (None, "classify")
    stamped = loading.stamp(type("M", (), {})(), ref)
    assert stamped.version is None and stamped.digest == loading.folder_digest(folder)[:16]
