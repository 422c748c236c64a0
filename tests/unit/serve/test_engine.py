"""Batching, mixed-adapter equivalence, hot load/unload under load, backpressure, cancel; each
with one `generate` per micro-batch and with continuous batching."""

from __future__ import annotations

import asyncio

import pytest
from tests.unit.serve._serve_support import chat_body, run_app, settings_for

from honed.serve.engine.continuous import RunningBatch

# The generation engine two ways: one `generate` per micro-batch, and continuous batching.
MODES = pytest.mark.parametrize("continuous", [False, True], ids=["static", "continuous"])


def _text(r) -> str:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def _record_batches(app, monkeypatch) -> list[set]:
    """Record which adapters shared a forward pass: the static engine's per-group call, or
    each decode step of a continuous batch."""
    gen = app.state.engine.generator
    seen: list[set] = []
    original, step = gen._generate, RunningBatch.step

    def spy(rows):
        seen.append({r.job.adapter for r in rows})
        return original(rows)

    def step_spy(batch):
        seen.append({r.job.adapter for r in batch.rows})
        return step(batch)

    gen._generate = spy
    monkeypatch.setattr(RunningBatch, "step", step_spy)
    return seen


@MODES
def test_mixed_adapter_batch_equals_single_adapter_outputs(tiny, continuous, monkeypatch):
    models = ["base", "a0", "a1", "base", "a0", "a1"]
    prompts = ["hello", "the quick brown fox", "profits rose", "what is", "lazy dog", "x"]

    async def go(c, app):
        seen = _record_batches(app, monkeypatch)
        single = [
            _text(await c.post("/v1/chat/completions", json=chat_body(m, p, max_tokens=8)))
            for m, p in zip(models, prompts, strict=True)
        ]
        app.state.engine.generator.batcher.max_wait = 0.5  # let the concurrent ones gather
        seen.clear()
        rs = await asyncio.gather(
            *(
                c.post("/v1/chat/completions", json=chat_body(m, p, max_tokens=8))
                for m, p in zip(models, prompts, strict=True)
            )
        )
        mixed = [_text(r) for r in rs]
        assert any(len(s) >= 3 for s in seen), seen  # base + 2 adapters in one pass
        assert mixed == single
        assert len(set(single)) > 1  # the adapters really change the output

    run_app(settings_for(tiny, max_batch_size=8, max_wait_ms=0, continuous_batching=continuous), go)


@MODES
def test_hot_load_swap_unload_under_load_fails_nothing(tiny, continuous):
    a = tiny["adapters"]

    async def go(c, app):
        ref_a2 = None
        stop = asyncio.Event()
        failures: list[str] = []

        async def client(model: str):
            while not stop.is_set():
                r = await c.post("/v1/chat/completions", json=chat_body(model, max_tokens=4))
                if r.status_code != 200:
                    failures.append(f"{model}: {r.status_code} {r.text}")

        load = asyncio.gather(*(client(m) for m in ["base", "a0", "a0", "base"]))
        r = await c.post("/v1/adapters", json={"name": "a2", "source": str(a[2])})
        assert r.status_code == 201, r.text
        assert r.json()["parent"] == "base" and len(r.json()["sha256"]) == 64
        ref_a2 = _text(await c.post("/v1/chat/completions", json=chat_body("a2")))
        # Queue requests for a1, then unload it while they are in flight: none may fail.
        gen = app.state.engine.generator
        submitted: list[str] = []
        original_submit = gen.submit

        def counting_submit(ids, model_id, params):
            job = original_submit(ids, model_id, params)
            submitted.append(model_id)
            return job

        gen.submit = counting_submit
        inflight = [
            asyncio.ensure_future(
                c.post("/v1/chat/completions", json=chat_body("a1", max_tokens=8))
            )
            for _ in range(12)
        ]
        while submitted.count("a1") < 12:  # all accepted (queued or running) before the unload
            await asyncio.sleep(0.001)
        r = await c.delete("/v1/adapters/a1")
        assert r.status_code == 200 and r.json() == {"name": "a1", "deleted": True}
        assert all(x.status_code == 200 for x in await asyncio.gather(*inflight))
        assert (await c.post("/v1/chat/completions", json=chat_body("a1"))).status_code == 404
        # Hot swap a0 -> adapter2's weights while a0 traffic flows.
        r = await c.post("/v1/adapters", json={"name": "a0", "source": str(a[2])})
        assert r.status_code == 201
        assert _text(await c.post("/v1/chat/completions", json=chat_body("a0"))) == ref_a2
        stop.set()
        await load
        assert not failures, failures[:3]
        ids = {m["id"] for m in (await c.get("/v1/models")).json()["data"]}
        assert ids == {"base", "a0", "a2", "sent"}

    run_app(settings_for(tiny, max_batch_size=4, continuous_batching=continuous), go, admin=True)


def test_adapter_load_checks(tiny, tmp_path):
    async def go(c, app):
        a = tiny["adapters"]
        r = await c.post(
            "/v1/adapters", json={"name": "x", "source": str(a[2]), "sha256": "0" * 64}
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "digest_mismatch"
        r = await c.post("/v1/adapters", json={"name": "x", "source": str(tmp_path)})
        assert r.status_code == 400 and r.json()["error"]["param"] == "source"
        r = await c.post("/v1/adapters", json={"name": "x", "source": str(tiny["clf"])})
        assert r.status_code == 400
        r = await c.post("/v1/adapters", json={"name": "base", "source": str(a[2])})
        assert r.status_code == 409
        assert (await c.delete("/v1/adapters/nope")).status_code == 404

    run_app(settings_for(tiny), go, admin=True)


@MODES
def test_full_queue_answers_503_with_retry_after(tiny, continuous):
    async def go(c, app):
        rs = await asyncio.gather(
            *(
                c.post("/v1/chat/completions", json=chat_body("a0", max_tokens=30))
                for _ in range(24)
            )
        )
        codes = [r.status_code for r in rs]
        assert set(codes) <= {200, 503}, codes
        assert 503 in codes and 200 in codes
        refused = next(r for r in rs if r.status_code == 503)
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"

    over = {"max_queue": 1, "max_batch_size": 1, "max_wait_ms": 0}
    run_app(settings_for(tiny, continuous_batching=continuous, **over), go)


@MODES
def test_deadline_gives_504(tiny, continuous):
    async def go(c, app):
        r = await c.post("/v1/chat/completions", json=chat_body("a0", max_tokens=200))
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"

    over = {"request_timeout_s": 0.01, "max_tokens_cap": 512}
    run_app(settings_for(tiny, continuous_batching=continuous, **over), go)


@MODES
def test_cancel_stops_generation_early(tiny, continuous):
    from honed.serve.engine.generation import SamplingParams

    async def go(c, app):
        gen = app.state.engine.generator
        ids = gen.encode_text("hello")
        job = gen.submit(ids, "base", SamplingParams(max_tokens=400, temperature=1.0, seed=1))
        while (await job.events.get())[0] != "delta":
            pass
        job.cancel()  # what a client disconnect does
        while (await job.events.get())[0] != "done":
            pass
        assert job.rows[0].finish_reason == "cancelled"
        assert job.completion_tokens < 400

    run_app(settings_for(tiny, max_tokens_cap=512, continuous_batching=continuous), go)


def test_merged_single_adapter_matches_unmerged(tiny):
    a = tiny["adapters"]

    async def unmerged(c, app):
        return _text(await c.post("/v1/chat/completions", json=chat_body("a0", max_tokens=8)))

    async def merged(c, app):
        ids = {m["id"]: m for m in (await c.get("/v1/models")).json()["data"]}
        assert set(ids) == {"a0"} and ids["a0"]["parent"] == "base"
        r = await c.post("/v1/adapters", json={"name": "z", "source": str(a[1])})
        assert r.status_code == 409
        assert (await c.post("/v1/chat/completions", json=chat_body("base"))).status_code == 404
        return _text(await c.post("/v1/chat/completions", json=chat_body("a0", max_tokens=8)))

    from honed.serve.settings import ServeSettings

    plain = ServeSettings(models=[str(tiny["base"]), f"a0={a[0]}"])
    merge = ServeSettings(models=[f"a0={a[0]}"], merge_adapter=True)
    assert run_app(plain, unmerged, admin=True) == run_app(merge, merged, admin=True)
