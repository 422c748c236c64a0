"""Hostile input over every inference route: never a 500, always a request-log row; the event
loop keeps answering /healthz while huge prompts are tokenized; the request log stores
capped texts. (schemathesis fuzzes the OpenAPI schema in tests/e2e/test_serve_schema.py; these
are the hand-made bodies a schema-driven fuzzer does not write.)"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from tests.unit.serve._serve_support import chat_body, run_app, settings_for

from honed.monitor.requestlog import RequestStore
from honed.serve.http.request_ids import TRUNCATED

LONE = "\\ud800"  # a JSON escape: the body is valid JSON, its text is no valid Unicode
JSON = {"Content-Type": "application/json"}

# Route -> a valid body as JSON text, with {T} where a text goes.
ROUTES = {
    "/v1/chat/completions": '{"model": "a0", "max_tokens": 2, '
    '"messages": [{"role": "user", "content": "{T}"}]}',
    "/v1/completions": '{"model": "base", "max_tokens": 2, "prompt": "{T}"}',
    "/v1/classify": '{"model": "sent", "input": ["fine", "{T}"]}',
    "/invocations": '{"model": "sent", "input": "{T}"}',
}

# Raw bodies (bytes) sent to every route with Content-Type: application/json.
HOSTILE_RAW: dict[str, bytes] = {
    "invalid utf-8": b'{"model": "sent", "input": "\xff\xfe\xc3("}',
    "CESU-8 bytes (not UTF-8)": b'{"model": "sent", "input": "\xed\xa0\x80"}',
    "NaN": b'{"model": "base", "temperature": NaN, "input": "x", "prompt": "x", "messages": []}',
    "Infinity": b'{"model": "sent", "input": "x", "top_p": -Infinity, "max_tokens": Infinity}',
    "overflowing float": b'{"model": "base", "prompt": "x", "temperature": 1e999}',
    "deep nesting": b'{"model": "sent", "input": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "deep nesting with NaN": b'{"input": ' + b"[" * 5000 + b"NaN" + b"]" * 5000 + b"}",
    "truncated": b'{"model": "sent", "input": "x',
    "empty": b"",
    "null": b"null",
    "a list": b"[1, 2, 3]",
    "a string": b'"hello"',
    "duplicate keys": b'{"model": "sent", "model": "base", "input": "x", "input": 3}',
    "surrogate key": b'{"model": "sent", "input": "x", "\\udfff": 1}',
    "paired surrogates are fine": b'{"model": "sent", "input": "\\ud83d\\ude00"}',
}

# Parsed bodies, sent as JSON to every route.
HOSTILE_JSON: dict[str, Any] = {
    "wrong types": {"model": 3, "messages": "hi", "prompt": {"a": 1}, "input": None},
    "messages of junk": {"model": "a0", "messages": [1, None, [], {"role": 5}]},
    "huge numbers": {
        "model": "base",
        "prompt": "x",
        "input": "x",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 10**40,
        "n": 2**63,
        "seed": -(2**70),
        "logprobs": 10**9,
        "logit_bias": {"99999999999999999999": 100},
    },
    "negative and zero": {"model": "base", "prompt": "x", "max_tokens": -1, "n": 0},
    "nested junk": {"model": "sent", "input": [[["x"]]], "messages": [{"content": [[{}]]}]},
    "unknown model": {"model": "\u0000" * 300, "input": "x", "prompt": "x"},
    "empty input list": {"model": "sent", "input": [], "prompt": []},
    "token ids out of range": {"model": "base", "prompt": [[-5, 10**12]]},
    "stop of junk": {"model": "base", "prompt": "x", "stop": [None, 3, ""]},
    "role smuggling": {"model": "a0", "messages": [{"role": "system\n", "content": "x"}]},
}

# (content type, body) pairs that are not JSON.
NOT_JSON = {
    "form": ("application/x-www-form-urlencoded", b"model=sent&input=x"),
    "xml": ("application/xml", b"<input>x</input>"),
    "plain text": ("text/plain", b"classify this"),
    "multipart": ("multipart/form-data; boundary=b", b"--b\r\n\r\nx\r\n--b--\r\n"),
    "octets": ("application/octet-stream", bytes(range(256))),
}


def _fill(template: str, text: str) -> bytes:
    return template.replace("{T}", text).encode()


async def _send_all(c) -> list[tuple[str, str, Any]]:
    """(route, why, response) for every hostile body on every route."""
    sent: list[tuple[str, str, Any]] = []
    for route, template in ROUTES.items():
        r = await c.post(route, content=_fill(template, LONE), headers=JSON)
        sent.append((route, "lone surrogate", r))
        r = await c.post(route, content=_fill(template, f"ok {LONE} ok"), headers=JSON)
        sent.append((route, "surrogate inside text", r))
        for why, raw in HOSTILE_RAW.items():
            sent.append((route, why, await c.post(route, content=raw, headers=JSON)))
        for why, body in HOSTILE_JSON.items():
            sent.append((route, why, await c.post(route, json=body)))
        for why, (kind, raw) in NOT_JSON.items():
            r = await c.post(route, content=raw, headers={"Content-Type": kind})
            sent.append((route, why, r))
    raw = (
        '{"model": "a0", "messages": [{"role": "user", '
        f'"content": [{{"type": "text", "text": "{LONE}"}}]}}]}}'
    ).encode()
    r = await c.post("/v1/chat/completions", content=raw, headers=JSON)
    sent.append(("/v1/chat/completions", "surrogate in a content part", r))
    return sent


def test_hostile_bodies_get_a_4xx_and_a_log_row_on_every_route(tiny, tmp_path):
    url = f"sqlite:///{tmp_path / 'requests.db'}"
    settings = settings_for(tiny, sagemaker=True, request_log_url=url)

    async def go(c, app):
        sent = await _send_all(c)
        metrics = (await c.get("/metrics")).text
        assert app.state.request_logger.flush(timeout=60)
        return sent, metrics

    sent, metrics = run_app(settings, go)
    rows: dict[str, list[int]] = {}
    for row in RequestStore(url).fetch():
        rows.setdefault(row["id"], []).append(row["status_code"])
    for route, why, r in sent:
        assert r.status_code < 500, (route, why, r.status_code, r.text[:300])
        assert "Traceback" not in r.text
        rid = r.headers["x-request-id"]
        assert r.status_code in rows.get(rid, []), (route, why, r.status_code, "no log row")
        if why == "paired surrogates are fine" and route in {"/v1/classify", "/invocations"}:
            assert r.status_code == 200
    for route, why, r in sent:
        if "surrogate" in why and "paired" not in why:
            assert r.status_code == 400, (route, why)
            assert "lone UTF-16 surrogate" in r.json()["error"]["message"]
    refused = sum(r.status_code >= 400 for _, _, r in sent)
    errors = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("honed_errors_total{")
    )
    assert refused > 100 and errors == refused  # each refusal in the error metrics too


def test_healthz_answers_while_huge_prompts_are_tokenized(tiny):
    """Four ~750 KB chat prompts arrive; while their templates are rendered and tokenized,
    /healthz still answers (tokenizing is held until it did: on the event loop, this would
    block the loop until the hold timed out, and /healthz would come last)."""
    order: list[str] = []
    entered = threading.Event()
    release = threading.Event()

    def setup(app):
        async def patch_when_ready():
            while app.state.engine is None or not app.state.engine.ready:
                await asyncio.sleep(0.01)
            gen = app.state.engine.generator
            encode = gen.encode_chat

            def held(messages):
                entered.set()
                release.wait(timeout=5)
                order.append("tokenized")
                return encode(messages)

            gen.encode_chat = held

        app.state.patch = patch_when_ready

    async def go(c, app):
        await app.state.patch()
        big = "lorem ipsum dolor sit amet " * 28_000  # ~756 KB
        tasks = [
            asyncio.create_task(c.post("/v1/chat/completions", json=chat_body("a0", big)))
            for _ in range(4)
        ]
        await asyncio.to_thread(entered.wait, 10)
        health = await c.get("/healthz")
        order.append("healthz")
        release.set()
        answers = await asyncio.gather(*tasks)
        return (
            health.status_code,
            [a.status_code for a in answers],
            [a.json()["error"]["code"] for a in answers],
        )

    # A token limit the prompts' characters could fit in: they are tokenized, then refused.
    settings = settings_for(tiny, request_log=False, max_prompt_tokens=100_000)
    health, statuses, codes = run_app(settings, go, setup=setup)
    assert health == 200
    assert order[0] == "healthz" and order.count("tokenized") == 4
    assert statuses == [400] * 4 and set(codes) == {"context_length_exceeded"}


def test_a_prompt_too_long_for_any_tokenization_is_refused_untokenized(tiny):
    calls = []

    async def go(c, app):
        gen = app.state.engine.generator
        gen.encode_chat = lambda m: calls.append("chat")
        gen.encode_text = lambda t: calls.append("text")
        big = "lorem ipsum dolor sit amet " * 28_000
        chat = await c.post("/v1/chat/completions", json=chat_body("a0", big))
        text = await c.post("/v1/completions", json={"model": "base", "prompt": ["x", big]})
        return [(r.status_code, r.json()["error"]) for r in (chat, text)]

    for status, error in run_app(settings_for(tiny, request_log=False), go):
        assert status == 400 and error["code"] == "context_length_exceeded"
        assert "756000 characters" in error["message"]
    assert calls == []


def test_request_log_stores_capped_texts(tiny, tmp_path):
    url = f"sqlite:///{tmp_path / 'requests.db'}"
    settings = settings_for(tiny, request_log_url=url, redact_pii=False)
    huge = "x" * 750_000

    async def go(c, app):
        r = await c.post("/v1/classify", json={"model": "sent", "input": [huge, "short"]})
        assert r.status_code == 200, r.text
        assert app.state.request_logger.flush(timeout=60)
        return r.json()["id"]

    rid = run_app(settings, go)
    rows = [row for row in RequestStore(url).fetch() if row["id"] == rid]
    by_item = {row["item"]: row for row in rows}
    cut = by_item[0]
    limit = settings.request_log_max_chars
    assert cut["input_text"] == "x" * limit + TRUNCATED
    assert cut["extra"]["input_chars"] == 750_000
    assert by_item[1]["input_text"] == "short" and not (by_item[1]["extra"] or {})
