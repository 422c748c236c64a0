"""Continuous batching: rows join and leave between decode steps with the outputs unchanged."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from tests.unit.serve._serve_support import chat_body, run_app, settings_for

from honed.serve.engine import loading
from honed.serve.engine.continuous import RunningBatch, _top_p
from honed.serve.engine.generation import GenJob, SamplingParams

PROMPTS = ["the quick brown fox jumps over the lazy dog", "hello", "profits rose sharply", "x y"]


@pytest.fixture(scope="module")
def base(tiny):
    model = loading.load_causal_lm(tiny["base"], "cpu", torch.float32)
    return model, loading.load_tokenizer(tiny["base"], "left")


def _job(tok, text: str, max_tokens: int, **params) -> GenJob:
    ids = tok(text)["input_ids"]
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0, **params)
    return GenJob(ids, sampling, None, time.monotonic() + 60, asyncio.new_event_loop())


def _greedy_alone(model, tok, text: str, n: int) -> list[int]:
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, ids.shape[1] :].tolist()


def test_rows_joining_late_decode_as_if_alone(base):
    model, tok = base
    n = 10
    jobs = [_job(tok, p, n) for p in PROMPTS]
    batch = RunningBatch(model, tok, "cpu", mixed=False)
    batch.decoder.eos_ids = set()  # compare raw greedy tokens, eos included
    batch.admit(jobs[0].rows + jobs[1].rows)  # 2 rows of different lengths
    batch.step()
    batch.step()
    batch.admit(jobs[2].rows)  # joins mid-flight: its cache is left-padded to the batch's
    batch.step()
    batch.admit(jobs[3].rows)
    while batch.rows:
        batch.step()
        batch.evict()
    for job, text in zip(jobs, PROMPTS, strict=True):
        assert job.rows[0].tokens == _greedy_alone(model, tok, text, n), text
        assert job.rows[0].finish_reason == "length"


def test_evict_cuts_padding_no_row_needs(base):
    model, tok = base
    long, short = _job(tok, PROMPTS[0], 2), _job(tok, "hi", 6)
    batch = RunningBatch(model, tok, "cpu", mixed=False)
    batch.decoder.eos_ids = set()
    batch.admit(long.rows + short.rows)
    width = batch.mask.shape[1]  # the long prompt's length
    batch.step()
    assert [r.finished for r in batch.rows] == [True, False]
    left = batch.evict()
    assert left == long.rows and batch.rows == short.rows
    # Only the short row is left: its left padding is gone, from the mask and the cache.
    assert batch.mask.shape == (1, len(short.prompt_ids) + 1) and bool(batch.mask.all())
    assert batch.mask.shape[1] < width + 1
    assert batch.cache.layers[0].keys.shape[2] == batch.mask.shape[1]  # (1, heads, T, dim)
    while batch.rows:  # and it still decodes as if alone
        batch.step()
        batch.evict()
    assert short.rows[0].tokens == _greedy_alone(model, tok, "hi", 6)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.1, 0.5, 0.3, 0.1])
    assert _top_p(probs, 0.7).tolist() == pytest.approx([0.0, 0.5, 0.3, 0.0])
    assert _top_p(probs, 0.4).tolist() == pytest.approx([0.0, 0.5, 0.0, 0.0])
    assert _top_p(probs, 1.0) is probs
    # schemathesis sent top_p=5e-324: 0 in float32; the most likely token must stay
    assert _top_p(probs, 5e-324).tolist() == pytest.approx([0.0, 0.5, 0.0, 0.0])


def test_a_late_request_does_not_wait_for_the_running_one(tiny):
    """The short request arrives while the long one decodes, and finishes first."""

    async def go(c, app):
        gen = app.state.engine.generator
        ids = gen.encode_text("hello")
        long = gen.submit(ids, "base", SamplingParams(max_tokens=300, temperature=0.0))
        while (await long.events.get())[0] != "delta":  # the long one is decoding
            pass
        r = await c.post("/v1/chat/completions", json=chat_body("a0", max_tokens=3))
        assert r.status_code == 200
        assert not long.rows[0].finished  # the short one did not wait for it
        long.cancel()
        while (await long.events.get())[0] != "done":
            pass

    over = {"max_tokens_cap": 512, "continuous_batching": True, "max_wait_ms": 0}
    run_app(settings_for(tiny, **over), go)


def test_seeded_sampling_does_not_depend_on_batch_mates(tiny):
    body = chat_body("a0", max_tokens=12, temperature=0.9, seed=7)

    async def go(c, app):
        alone = (await c.post("/v1/chat/completions", json=body)).json()
        others = [chat_body(m, "profits", max_tokens=12, temperature=0.5) for m in ("base", "a1")]
        rs = await asyncio.gather(
            *(c.post("/v1/chat/completions", json=b) for b in [*others, body, *others])
        )
        crowded = rs[2].json()
        assert crowded["choices"][0]["message"] == alone["choices"][0]["message"]

    run_app(settings_for(tiny, continuous_batching=True, max_wait_ms=0), go)


def test_an_adapter_loads_while_a_batch_runs(tiny):
    """Adapter loads run between decode steps, not after the traffic stops."""
    a = tiny["adapters"]

    async def go(c, app):
        gen = app.state.engine.generator
        long = gen.submit(
            gen.encode_text("hello"), "base", SamplingParams(max_tokens=400, temperature=0.0)
        )
        while (await long.events.get())[0] != "delta":
            pass
        r = await c.post("/v1/adapters", json={"name": "a2", "source": str(a[2])})
        assert r.status_code == 201, r.text
        assert not long.rows[0].finished  # loaded between two steps of the running batch
        r = await c.post("/v1/chat/completions", json=chat_body("a2", max_tokens=3))
        assert r.status_code == 200  # and a request for it joins that batch
        long.cancel()

    over = {"max_tokens_cap": 512, "continuous_batching": True, "max_wait_ms": 0}
    run_app(settings_for(tiny, **over), go, admin=True)


def test_sliding_window_models_are_refused_with_a_clear_error():
    from transformers import MistralConfig, Qwen2Config

    from honed.errors import ModelError
    from honed.serve.engine.continuous import check_supported

    class Fake:
        config = MistralConfig(sliding_window=64)

    with pytest.raises(ModelError, match="full-attention decoders only"):
        check_supported(Fake())

    class FullAttention:  # Qwen2 ships a sliding_window size but does not use it by default
        config = Qwen2Config()

    check_supported(FullAttention())


def test_continuous_batching_is_the_default_and_the_flag_turns_it_off():
    import argparse

    from honed.serve import commands
    from honed.serve.settings import ServeSettings

    assert ServeSettings(models=[]).continuous_batching is True
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    assert parser.parse_args(["serve", "x"]).continuous_batching is None  # settings decide
    args = parser.parse_args(["serve", "x", "--no-continuous-batching"])
    assert args.continuous_batching is False


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(tiny, monkeypatch):
    step = RunningBatch.step
    calls = {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return step(batch)

    monkeypatch.setattr(RunningBatch, "step", flaky)

    async def go(c, app):
        r = await c.post("/v1/chat/completions", json=chat_body("a0", max_tokens=8))
        assert r.status_code == 500 and r.json()["error"]["code"] == "generation_failed"
        assert "boom" not in r.text and "Traceback" not in r.text
        r = await c.post("/v1/chat/completions", json=chat_body("a0", max_tokens=8))
        assert r.status_code == 200  # the worker thread survived
        # The failed request released its adapter: unloading it does not wait forever.
        r = await asyncio.wait_for(c.delete("/v1/adapters/a0"), timeout=10)
        assert r.status_code == 200

    run_app(settings_for(tiny, max_wait_ms=0), go, admin=True)
