"""OpenAI-shaped responses, streaming, limits and error bodies."""

from __future__ import annotations

import json

from tests.unit.serve._serve_support import chat_body, run_app, settings_for


def _sse(text: str) -> list:
    events = [line.removeprefix("data: ") for line in text.split("\n\n") if line.strip()]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_chat_completion_shape(tiny):
    async def go(c, app):
        r = await c.post("/v1/chat/completions", json=chat_body("a0", max_tokens=5))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "chat.completion" and body["model"] == "a0"
        choice = body["choices"][0]
        assert choice["message"]["role"] == "assistant"
        assert choice["finish_reason"] in {"stop", "length"}
        u = body["usage"]
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
        assert 0 < u["completion_tokens"] <= 5

    run_app(settings_for(tiny), go)


def test_completions_n_and_prompt_list(tiny):
    async def go(c, app):
        body = {
            "model": "base",
            "prompt": ["hello", "the fox"],
            "max_tokens": 4,
            "n": 2,
            "temperature": 0.8,
            "seed": 3,
        }
        r = await c.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["object"] == "text_completion"
        assert [ch["index"] for ch in out["choices"]] == [0, 1, 2, 3]
        assert all(isinstance(ch["text"], str) for ch in out["choices"])

    run_app(settings_for(tiny), go)


def test_greedy_is_deterministic_and_seed_repeats(tiny):
    async def go(c, app):
        a = await c.post(
            "/v1/completions",
            json={"model": "a1", "prompt": "hello", "max_tokens": 6, "temperature": 0},
        )
        b = await c.post(
            "/v1/completions",
            json={"model": "a1", "prompt": "hello", "max_tokens": 6, "temperature": 0},
        )
        assert a.json()["choices"][0]["text"] == b.json()["choices"][0]["text"]
        s = {"model": "base", "prompt": "hello", "max_tokens": 6, "temperature": 1, "seed": 7}
        x = (await c.post("/v1/completions", json=s)).json()["choices"][0]["text"]
        y = (await c.post("/v1/completions", json=s)).json()["choices"][0]["text"]
        assert x == y

    run_app(settings_for(tiny), go)


def test_streaming_matches_non_streaming(tiny):
    async def go(c, app):
        plain = (await c.post("/v1/chat/completions", json=chat_body("a1"))).json()
        r = await c.post(
            "/v1/chat/completions",
            json=chat_body("a1", stream=True, stream_options={"include_usage": True}),
        )
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        chunks = _sse(r.text)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
        text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks[:-1])
        assert text == plain["choices"][0]["message"]["content"]
        finals = [ch["choices"][0]["finish_reason"] for ch in chunks[:-1]]
        assert finals[-1] in {"stop", "length"}
        assert chunks[-1]["usage"] == plain["usage"]

    run_app(settings_for(tiny), go)


def test_stop_string_cuts_output(tiny):
    async def go(c, app):
        full = (
            await c.post(
                "/v1/completions",
                json={"model": "base", "prompt": "hello", "max_tokens": 12, "temperature": 0},
            )
        ).json()
        text = full["choices"][0]["text"]
        # Greedy output is deterministic, so any piece of it is a stop string that must occur:
        # take the first non-blank one after the start, so the cut output is not empty either.
        assert text[1:].strip(), f"12 greedy tokens gave no text to stop on: {text!r}"
        start = next(i for i, ch in enumerate(text) if i > 0 and not ch.isspace())
        stop = text[start : start + 2]
        cut = (
            await c.post(
                "/v1/completions",
                json={
                    "model": "base",
                    "prompt": "hello",
                    "max_tokens": 12,
                    "temperature": 0,
                    "stop": [stop],
                },
            )
        ).json()
        choice = cut["choices"][0]
        assert choice["finish_reason"] == "stop"
        assert choice["text"] == text[: text.find(stop)]
        assert stop not in choice["text"]

    run_app(settings_for(tiny), go)


def test_models_lists_adapters_with_parent(tiny):
    async def go(c, app):
        data = (await c.get("/v1/models")).json()["data"]
        by_id = {m["id"]: m for m in data}
        assert by_id["base"]["parent"] is None and by_id["base"]["kind"] == "generate"
        assert by_id["a0"]["parent"] == "base" and by_id["a0"]["root"] == "base"
        assert by_id["sent"]["kind"] == "classify"

    run_app(settings_for(tiny), go)


def test_classify_batch(tiny):
    async def go(c, app):
        r = await c.post("/v1/classify", json={"model": "sent", "input": ["good", "bad", "meh"]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [d["index"] for d in body["data"]] == [0, 1, 2]
        for d in body["data"]:
            assert set(d["scores"]) == {"negative", "neutral", "positive"}
            assert abs(sum(d["scores"].values()) - 1) < 1e-4
            assert d["score"] == max(d["scores"].values())
        single = (await c.post("/v1/classify", json={"model": "sent", "input": "bad"})).json()
        assert abs(single["data"][0]["score"] - body["data"][1]["score"]) < 1e-5

    run_app(settings_for(tiny), go)


def test_errors_are_openai_shaped(tiny):
    async def go(c, app):
        cases = [
            (chat_body("nope"), 404),
            (chat_body("sent"), 400),
            (chat_body("a0", max_tokens=10_000), 400),
            (chat_body("a0", bogus=1), 400),
            ({"model": "a0", "messages": []}, 400),
            (chat_body("a0", text="hello " * 400), 400),
        ]
        for body, status in cases:
            r = await c.post("/v1/chat/completions", json=body)
            assert r.status_code == status, (body, r.text)
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["message"]
            assert "Traceback" not in r.text
        r = await c.post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400 and "error" in r.json()
        r = await c.post("/v1/classify", json={"model": "a0", "input": "x"})
        assert r.status_code == 400

    run_app(settings_for(tiny, max_prompt_tokens=64, max_tokens_cap=64), go)


def test_health_ready_metrics(tiny):
    async def go(c, app):
        assert (await c.get("/healthz")).json()["status"] == "ok"
        ready = await c.get("/readyz")
        assert ready.status_code == 200 and "a0" in ready.json()["models"]
        await c.post("/v1/chat/completions", json=chat_body("a0"))
        await c.post("/v1/chat/completions", json=chat_body("nope"))
        text = (await c.get("/metrics")).text
        gen = app.state.engine.generator
        # `version`: the registry version, else the weights digest (these are folders)
        a0, base = gen.adapters["a0"].sha256[:16], gen.digest
        assert len(base) == 16 and a0 != base
        assert (
            f'honed_requests_total{{adapter="a0",model="base",route="chat",status="200",'
            f'version="{a0}"}} 1.0' in text
        )
        assert (
            'honed_errors_total{adapter="",model="unknown",route="chat",type="not_found",'
            'version=""}' in text
        )
        assert "honed_completion_tokens_total" in text
        assert f'honed_batch_size_count{{model="base",version="{base}"}}' in text
        assert f'honed_queue_depth{{model="base",version="{base}"}} 0.0' in text

    run_app(settings_for(tiny), go)


def test_readyz_not_ready_when_load_fails(tmp_path):
    import asyncio

    import httpx

    from honed.serve.http.app import create_app
    from honed.serve.settings import ServeSettings

    app = create_app(ServeSettings(models=[str(tmp_path)]))

    async def main():
        async with app.router.lifespan_context(app):
            for _ in range(200):
                if app.state.load_error:
                    break
                await asyncio.sleep(0.01)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://t"
            ) as c:
                r = await c.get("/readyz")
                assert r.status_code == 503 and "not a model folder" in r.json()["detail"]
                assert (await c.get("/healthz")).status_code == 200
                r = await c.post("/v1/completions", json={"model": "x", "prompt": "hi"})
                assert r.status_code == 503 and r.headers["retry-after"]

    asyncio.run(main())


def test_guards_and_request_logger(tiny):
    from honed.serve.http.guards import GuardRejection

    records = []

    class Logger:
        def submit(self, record):
            records.append(record)

    def no_secret(ctx):
        if "secret" in " ".join(ctx.texts):
            raise GuardRejection("prompt mentions a secret")

    def setup(app):
        app.state.input_guards.append(no_secret)
        app.state.output_guards.append(lambda ctx, text: "[clean]")
        app.state.request_logger = Logger()

    async def go(c, app):
        r = await c.post("/v1/chat/completions", json=chat_body("a0", text="a secret"))
        assert r.status_code == 400 and r.json()["error"]["code"] == "guard_rejected"
        r = await c.post("/v1/chat/completions", json=chat_body("a0"))
        assert r.json()["choices"][0]["message"]["content"] == "[clean]"
        r = await c.post("/v1/classify", json={"model": "sent", "input": ["good", "bad"]})
        assert r.status_code == 200

    run_app(settings_for(tiny), go, setup=setup)
    ok = [r for r in records if r["status"] == 200]
    assert {r["route"] for r in ok} == {"chat", "classify"}
    chat = next(r for r in ok if r["route"] == "chat")
    assert chat["adapter"] == "a0" and chat["output"] == "[clean]" and chat["input"] == "hello"
    cls = [r for r in ok if r["route"] == "classify"]
    assert len(cls) == 2 and all(r["label"] == "[clean]" and r["score"] > 0 for r in cls)
    required = {
        "id",
        "model",
        "adapter",
        "route",
        "latency_ms",
        "prompt_tokens",
        "completion_tokens",
        "input",
        "output",
        "label",
        "score",
        "status",
    }
    assert all(required <= set(r) for r in records)


def test_classify_parallel_workers_same_answers(tiny):
    import asyncio

    texts = [f"text number {i} about profits" for i in range(40)]

    async def go(c, app):
        rs = await asyncio.gather(
            *(c.post("/v1/classify", json={"model": "sent", "input": t}) for t in texts)
        )
        return [r.json()["data"][0]["score"] for r in rs]

    one = run_app(settings_for(tiny, max_batch_size=4), go)
    two = run_app(settings_for(tiny, max_batch_size=4, classify_workers=2), go)
    assert all(abs(a - b) < 1e-5 for a, b in zip(one, two, strict=True))


def test_classify_empty_text_does_not_fail_batch_mates(tiny):
    import asyncio

    async def go(c, app):
        bodies = [{"model": "sent", "input": ""}, {"model": "sent", "input": ["ok", ""]}]
        bodies += [{"model": "sent", "input": "fine"}] * 4
        app.state.engine.classifiers["sent"].batcher.max_wait = 0.2
        rs = await asyncio.gather(*(c.post("/v1/classify", json=b) for b in bodies))
        assert [r.status_code for r in rs] == [200] * len(bodies), [r.text for r in rs]

    run_app(settings_for(tiny), go)


def test_one_failing_request_does_not_fail_its_batch(tiny):
    import asyncio

    async def go(c, app):
        clf = app.state.engine.classifiers["sent"]
        classify = clf.classify

        def flaky(texts):
            if "boom" in texts:
                raise RuntimeError("bad input")
            return classify(texts)

        clf.classify = flaky
        clf.batcher.max_wait = 0.2
        bodies = [{"model": "sent", "input": "boom"}] + [{"model": "sent", "input": "ok"}] * 3
        rs = await asyncio.gather(*(c.post("/v1/classify", json=b) for b in bodies))
        assert [r.status_code for r in rs] == [500, 200, 200, 200]
        assert "bad input" not in rs[0].text and "Traceback" not in rs[0].text

    run_app(settings_for(tiny), go)


def test_no_route_dependency_runs_in_the_thread_pool():
    """FastAPI runs a plain `def` dependency on its thread pool: three such hops per request
    cost ~25% of /v1/classify throughput (GIL hand-offs with the batch threads). Every
    dependency of every route must be a coroutine (or an object with an async __call__)."""
    import inspect

    from fastapi.routing import APIRoute

    from honed.serve.http.app import create_app
    from honed.serve.settings import ServeSettings

    app = create_app(ServeSettings(models=[], enable_admin=True))

    def calls(dependant):
        for dep in dependant.dependencies:
            yield dep.call
            yield from calls(dep)

    def api_routes(routes):
        for route in routes:
            if isinstance(route, APIRoute):
                yield route
            elif hasattr(route, "original_router"):  # FastAPI >= 0.16x keeps included routers
                yield from api_routes(route.original_router.routes)

    sync = set()
    seen = 0
    for route in api_routes(app.routes):
        seen += 1  # (a sync endpoint is fine where it does blocking I/O: /v1/feedback)
        for call in calls(route.dependant):
            target = call if inspect.isfunction(call) else type(call).__call__
            if not inspect.iscoroutinefunction(target):
                sync.add(f"{route.path}: {getattr(call, '__name__', call)}")
    assert seen >= 8, "routes not found: FastAPI's router layout changed"
    assert not sync, sorted(sync)
