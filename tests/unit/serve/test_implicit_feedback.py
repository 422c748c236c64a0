"""Implicit feedback the server records: regenerated prompts and abandoned streams."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from tests.unit.serve._serve_support import chat_body, run_app

from honed.serve.http.auth import hash_key
from honed.serve.http.tracking import PromptMemory, prompt_key
from honed.serve.settings import ApiKeyEntry, ServeSettings


def _settings(tiny: dict[str, Any], url: str, **over: Any) -> ServeSettings:
    # The base alone: these tests need one generator, not the adapters and the classifier.
    return ServeSettings(models=[str(tiny["base"])], max_wait_ms=2.0, request_log_url=url, **over)


def _feedback(url: str) -> list[dict[str, Any]]:
    from honed.monitor.feedback import FeedbackStore

    return FeedbackStore(url).joined()


def _requests(url: str) -> dict[str, dict[str, Any]]:
    from honed.monitor.requestlog import RequestStore

    return {r["id"]: r for r in RequestStore(url).fetch()}


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'requests.db'}"


def test_regenerate_is_recorded_against_the_earlier_request(tiny, url):
    async def go(c, app):
        post = c.post
        hello = chat_body("base", "hello", temperature=1.0)  # a sampled repeat can differ
        first = (await post("/v1/chat/completions", json=hello)).json()
        await post("/v1/chat/completions", json=chat_body("base", "something else"))
        again = (await post("/v1/chat/completions", json=hello)).json()
        one = {"model": "base", "prompt": "once upon", "max_tokens": 4, "temperature": 0}
        other = {**one, "prompt": "twice upon"}
        await post("/v1/completions", json=one)
        await post("/v1/completions", json=other)
        assert app.state.request_logger.flush(timeout=30)
        return first["id"], again["id"]

    first, again = run_app(_settings(tiny, url), go)
    rows = _feedback(url)
    assert [(r["request_id"], r["signal"], r["detail"]) for r in rows] == [
        (first, "regenerate", {"by_request_id": again})
    ]
    assert rows[0]["rating"] is None and rows[0]["req_input"] == "hello"


def test_regenerate_needs_the_same_caller_and_can_be_off(tiny, url):
    keys = [
        ApiKeyEntry(name="alice", sha256=hash_key("key-alice")),
        ApiKeyEntry(name="bob", sha256=hash_key("key-bob")),
    ]

    async def go(c, app):
        for key in ("key-alice", "key-bob"):
            headers = {"Authorization": f"Bearer {key}"}
            r = await c.post("/v1/chat/completions", json=chat_body("base"), headers=headers)
            assert r.status_code == 200
        assert app.state.request_logger.flush(timeout=30)

    run_app(_settings(tiny, url, api_keys=keys), go)
    assert _feedback(url) == []

    async def twice(c, app):
        for _ in range(2):
            assert (await c.post("/v1/chat/completions", json=chat_body("base"))).status_code == 200
        assert app.state.request_logger.flush(timeout=30)
        return getattr(app.state, "prompt_memory", None)

    assert run_app(_settings(tiny, url, regenerate_window_s=0), twice) is None
    assert _feedback(url) == []


async def _abandon_stream(app, body: dict[str, Any], after: int) -> list[dict[str, Any]]:
    """POST a streaming chat request straight to the ASGI app, as a server would, and
    disconnect while the ``after``-th SSE chunk is being sent. Returns the chunks received."""
    gone = asyncio.Event()
    received: list[bytes] = []
    raw = json.dumps(body).encode()
    pending = [{"type": "http.request", "body": raw, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        chunk = message.get("body") if message["type"] == "http.response.body" else None
        if chunk and len(received) + 1 >= after:
            gone.set()
        # A real server yields while writing, and notices the disconnect there: this send
        # is then cancelled, and its chunk never arrives.
        await asyncio.sleep(0)
        if chunk:
            received.append(chunk)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("test", 80),
    }
    await app(scope, receive, send)
    text = b"".join(received).decode()
    return [json.loads(line[6:]) for line in text.split("\n\n") if line.startswith("data: {")]


def test_abandoned_stream_is_recorded_and_completed_one_is_not(tiny, url):
    async def go(c, app):
        done = await c.post(
            "/v1/chat/completions", json=chat_body("base", "a full stream", stream=True)
        )
        assert done.status_code == 200 and "data: [DONE]" in done.text
        body = chat_body("base", "hello", stream=True, max_tokens=64)
        chunks = await _abandon_stream(app, body, after=3)
        assert app.state.request_logger.flush(timeout=30)
        return done.headers["x-request-id"], chunks

    completed, chunks = run_app(_settings(tiny, url), go)
    sent = sum(bool(ch["choices"][0]["delta"].get("content")) for ch in chunks)
    assert sent >= 1 and all(ch["choices"][0]["finish_reason"] is None for ch in chunks)
    rows = _feedback(url)
    assert [r["signal"] for r in rows] == ["abandoned"]
    abandoned = rows[0]["request_id"]
    assert abandoned == chunks[0]["id"] and abandoned != completed
    assert rows[0]["detail"]["tokens_sent"] == sent
    assert rows[0]["detail"]["tokens_generated"] >= sent
    logged = _requests(url)
    assert logged[abandoned]["status_code"] == 499 and logged[completed]["status_code"] == 200


def test_prompt_memory_expires_and_stays_bounded():
    now = [0.0]
    memory = PromptMemory(window_s=10, max_entries=3, clock=lambda: now[0])
    a = prompt_key("addr:1", "chat", "m", [{"role": "user", "content": "hi"}])
    assert a == prompt_key("addr:1", "chat", "m", [{"content": "hi", "role": "user"}])
    assert a != prompt_key("addr:2", "chat", "m", [{"role": "user", "content": "hi"}])
    memory.remember(a, "r1")
    now[0] = 5.0
    assert memory.previous(a) == "r1"
    now[0] = 10.5
    memory.remember(a, "r2")  # the latest answer is the one a repeat refers to
    now[0] = 20.0
    assert memory.previous(a) == "r2"
    now[0] = 21.0
    assert memory.previous(a) is None and len(memory) == 0
    for i in range(5):
        memory.remember(prompt_key("c", "chat", "m", i), f"x{i}")
    assert len(memory) == 3 and memory.previous(prompt_key("c", "chat", "m", 0)) is None


def test_deterministic_repeats_are_not_regenerations(tiny, url):
    """The issue's case: one key replaying identical greedy prompts (a test suite, a batch
    job) had 36% of its requests counted as regenerations. A greedy or seeded repeat cannot
    give another answer, so only a sampled repeat, or one the client marks, counts."""
    keys = [ApiKeyEntry(name="ci", sha256=hash_key("key-ci"))]
    auth = {"Authorization": "Bearer key-ci"}

    async def go(c, app):
        ids = []
        for body in (
            chat_body("base", "greedy"),
            chat_body("base", "greedy"),
            chat_body("base", "greedy"),
            chat_body("base", "seeded", temperature=1.0, seed=7),
            chat_body("base", "seeded", temperature=1.0, seed=7),
        ):
            r = await c.post("/v1/chat/completions", json=body, headers=auth)
            assert r.status_code == 200
            ids.append(r.json()["id"])
        marked = {**auth, "X-Honed-Regenerate": "1"}
        r = await c.post("/v1/chat/completions", json=chat_body("base", "greedy"), headers=marked)
        assert app.state.request_logger.flush(timeout=30)
        return ids, r.json()["id"]

    ids, marked = run_app(_settings(tiny, url, api_keys=keys), go)
    rows = _feedback(url)
    assert [(r["request_id"], r["detail"]) for r in rows] == [(ids[2], {"by_request_id": marked})]
    logged = _requests(url)
    assert {logged[i]["key_name"] for i in ids} == {"ci"}


def test_feedback_is_tied_to_the_key_capped_and_explicit_only(tiny, url):
    keys = [
        ApiKeyEntry(name="alice", sha256=hash_key("key-alice")),
        ApiKeyEntry(name="bob", sha256=hash_key("key-bob")),
    ]
    alice, bob = ({"Authorization": f"Bearer key-{n}"} for n in ("alice", "bob"))

    async def go(c, app):
        made = []
        for text in ("one", "two", "three"):
            r = await c.post("/v1/chat/completions", json=chat_body("base", text), headers=alice)
            made.append(r.json()["id"])
        assert app.state.request_logger.flush(timeout=30)
        fb = {"request_id": made[0], "preferred": "better"}
        other = await c.post("/v1/feedback", json=fb, headers=bob)
        unknown = await c.post("/v1/feedback", json={**fb, "request_id": "nope"}, headers=bob)
        forged = await c.post(
            "/v1/feedback", json={"request_id": made[0], "signal": "abandoned"}, headers=alice
        )
        first = await c.post("/v1/feedback", json=fb, headers=alice)
        again = await c.post("/v1/feedback", json={**fb, "preferred": "best"}, headers=alice)
        second = await c.post("/v1/feedback", json={**fb, "request_id": made[1]}, headers=alice)
        capped = await c.post("/v1/feedback", json={**fb, "request_id": made[2]}, headers=alice)
        return made[0], (other, unknown, forged, first, again, second, capped)

    settings = _settings(tiny, url, api_keys=keys, feedback_per_key_per_hour=2)
    mine, (other, unknown, forged, first, again, second, capped) = run_app(settings, go)
    # Another key's request reads exactly like an unknown one: no oracle.
    assert other.status_code == unknown.status_code == 404
    assert other.text.replace(mine, "nope") == unknown.text
    assert forged.status_code == 422 and "recorded by the server itself" in forged.text
    assert first.status_code == 201 and again.status_code == 201
    assert again.json()["replaced"] == 1  # one feedback per request per key: the latest
    assert second.status_code == 201
    assert capped.status_code == 429 and int(capped.headers["retry-after"]) >= 1
    rows = _feedback(url)
    kept = [(r["preferred"], r["key_name"]) for r in rows]
    assert kept == [("best", "alice"), ("better", "alice")]
