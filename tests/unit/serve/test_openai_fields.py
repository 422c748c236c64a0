"""Every request field the official `openai` client can send: honoured, accepted, or refused
with a 400 naming the field. Driven through `openai.AsyncOpenAI` over the app's ASGI
transport, on both engines (continuous batching, the default, and static `generate`)."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.serve._serve_support import run_app, settings_for

from honed.serve.http.openai_fields import template_messages
from honed.serve.http.schemas import ChatMessage

openai = pytest.importorskip("openai")
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(params=[True, False], ids=["continuous", "static"])
def settings(request, tiny):
    return settings_for(tiny, continuous_batching=request.param)


def drive(settings, fn) -> Any:
    """Run ``fn(client, http)`` with an AsyncOpenAI client talking to the app in-process."""

    async def go(http, app):
        client = openai.AsyncOpenAI(
            base_url="http://test/v1", api_key="unused", http_client=http, max_retries=0
        )
        return await fn(client, http)

    return run_app(settings, go)


async def _chat(client, **kw) -> Any:
    kw = {"model": "base", "messages": HELLO, "temperature": 0, **kw}
    return await client.chat.completions.create(**kw)


async def _refused(call, field: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await call
    assert field in err.value.message, err.value.message


def test_max_completion_tokens_is_max_tokens(settings):
    async def go(client, _):
        a = await _chat(client, max_completion_tokens=3)
        b = await _chat(client, max_tokens=3)
        both = await _chat(client, max_tokens=3, max_completion_tokens=3)
        assert a.usage.completion_tokens == 3 and a.choices[0].finish_reason == "length"
        assert a.choices[0].message.content == b.choices[0].message.content
        assert both.choices[0].message.content == a.choices[0].message.content
        with pytest.raises(openai.BadRequestError) as err:
            await _chat(client, max_tokens=3, max_completion_tokens=4)
        assert "max_tokens" in err.value.message and "max_completion_tokens" in err.value.message

    drive(settings, go)


def test_penalties_and_logit_bias_change_greedy_output_zero_does_not(settings):
    async def go(client, _):
        async def text(**kw) -> str:
            out = await _chat(client, max_tokens=12, **kw)
            return out.choices[0].message.content

        plain = await text()
        # The tiny random model repeats itself under greedy decoding: penalties must bite.
        assert await text(frequency_penalty=0, presence_penalty=0) == plain
        assert await text(frequency_penalty=2.0) != plain
        assert await text(presence_penalty=2.0) != plain
        comp = await client.completions.create(
            model="base", prompt="hello", max_tokens=8, temperature=0, frequency_penalty=0
        )
        again = await client.completions.create(
            model="base", prompt="hello", max_tokens=8, temperature=0
        )
        assert comp.choices[0].text == again.choices[0].text
        # A +100 bias makes the biased token win every step.
        forced = await _chat(client, max_tokens=4, logit_bias={"5": 100}, logprobs=True)
        ids = {e.token for e in forced.choices[0].logprobs.content}
        assert len(ids) == 1
        await _refused(_chat(client, logit_bias={"99999": 1}), "logit_bias")
        await _refused(_chat(client, frequency_penalty=3), "frequency_penalty")

    drive(settings, go)


def test_chat_logprobs_shape_stream_and_not(settings):
    async def go(client, _):
        out = await _chat(client, max_tokens=5, logprobs=True, top_logprobs=3)
        content = out.choices[0].logprobs.content
        assert len(content) == out.usage.completion_tokens == 5
        for e in content:
            assert len(e.top_logprobs) == 3 and e.logprob <= 0 and isinstance(e.bytes, list)
            # greedy: the chosen token is the most likely one
            assert e.logprob == pytest.approx(e.top_logprobs[0].logprob)
            assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob
        joined = b"".join(bytes(e.bytes) for e in content).decode("utf-8", "replace")
        assert joined == out.choices[0].message.content
        bare = await _chat(client, max_tokens=5, logprobs=True)
        assert all(e.top_logprobs == [] for e in bare.choices[0].logprobs.content)
        assert (await _chat(client, max_tokens=2)).choices[0].logprobs is None

        stream = await _chat(client, max_tokens=5, logprobs=True, top_logprobs=3, stream=True)
        streamed = [
            e
            async for c in stream
            if c.choices and c.choices[0].logprobs
            for e in c.choices[0].logprobs.content
        ]
        assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
        # cut at a stop string: every generated token still has its entry
        text = (await _chat(client, max_tokens=12)).choices[0].message.content
        stop = next(c for c in text[3:] if c.strip() and c != "\ufffd")
        cut = await _chat(client, max_tokens=12, logprobs=True, stop=[stop])
        assert cut.choices[0].finish_reason == "stop"
        assert len(cut.choices[0].logprobs.content) == cut.usage.completion_tokens
        await _refused(_chat(client, top_logprobs=2), "top_logprobs")
        await _refused(_chat(client, logprobs=True, top_logprobs=21), "top_logprobs")

    drive(settings, go)


def test_completion_logprobs_legacy_shape(settings):
    async def go(client, _):
        kw = {"model": "base", "prompt": "hello", "max_tokens": 4, "temperature": 0}
        out = await client.completions.create(**kw, logprobs=2)
        lp = out.choices[0].logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
        assert "".join(lp.tokens) == out.choices[0].text
        assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(4)]
        assert all(
            t in top and 2 <= len(top) <= 3
            for t, top in zip(lp.tokens, lp.top_logprobs, strict=True)
        )
        stream = await client.completions.create(**kw, logprobs=2, stream=True)
        tokens, offsets = [], []
        async for c in stream:
            if c.choices and c.choices[0].logprobs:
                tokens += c.choices[0].logprobs.tokens
                offsets += c.choices[0].logprobs.text_offset
        assert tokens == lp.tokens and offsets == lp.text_offset
        await _refused(client.completions.create(**kw, logprobs=6), "logprobs")

    drive(settings, go)


def test_content_parts_and_developer_role(settings):
    async def go(client, _):
        plain = await _chat(
            client,
            max_tokens=5,
            messages=[{"role": "system", "content": "be brief"}, *HELLO],
        )
        parts = await _chat(
            client,
            max_tokens=5,
            messages=[
                {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
                {"role": "user", "content": [{"type": "text", "text": "hello"}]},
            ],
        )
        assert parts.choices[0].message.content == plain.choices[0].message.content
        assert parts.usage.prompt_tokens == plain.usage.prompt_tokens
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
        await _refused(_chat(client, messages=[{"role": "user", "content": [image]}]), "image_url")
        audio = {"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}
        await _refused(
            _chat(client, messages=[{"role": "user", "content": [audio]}]), "input_audio"
        )
        # the tiny model's template has no tool role: refused, naming the role
        tool = {"role": "tool", "content": "42", "tool_call_id": "c1"}
        await _refused(_chat(client, messages=[*HELLO, tool]), "tool")
        await _refused(_chat(client, messages=[{"role": "user", "content": None}]), "content")

    drive(settings, go)


def test_token_array_prompts(settings, tiny):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tiny["base"])("hello")["input_ids"]

    async def go(client, _):
        kw = {"model": "base", "max_tokens": 4, "temperature": 0}
        text = await client.completions.create(prompt="hello", **kw)
        one = await client.completions.create(prompt=ids, **kw)
        two = await client.completions.create(prompt=[ids, ids[:1]], **kw)
        assert one.choices[0].text == text.choices[0].text
        assert one.usage.prompt_tokens == len(ids)
        assert [c.index for c in two.choices] == [0, 1]
        assert two.choices[0].text == text.choices[0].text
        await _refused(client.completions.create(prompt=[1, 10**6], **kw), "prompt")
        await _refused(client.completions.create(prompt=[[1], [-1]], **kw), "prompt")

    drive(settings, go)


# (field, value) the client can send that this server refuses, naming the field
REFUSED_CHAT = [
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("tool_choice", "auto"),
    ("functions", [{"name": "f", "parameters": {}}]),
    ("function_call", "auto"),
    ("response_format", {"type": "grammar"}),  # json_object / json_schema: test_response_format
    ("modalities", ["text", "audio"]),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("prediction", {"type": "content", "content": "x"}),
    ("web_search_options", {}),
    ("reasoning_effort", "low"),
    ("verbosity", "low"),
]
ACCEPTED_CHAT = {
    "tool_choice": "none",
    "response_format": {"type": "text"},
    "modalities": ["text"],
    "parallel_tool_calls": False,
    "store": False,
    "metadata": {"k": "v"},
    "user": "u1",
    "service_tier": "auto",
    "seed": 1,
    "n": 2,
    "prompt_cache_key": "k",
    "safety_identifier": "s",
    "stream_options": None,
}


def test_refused_and_accepted_fields(settings):
    async def go(client, http):
        for field, value in REFUSED_CHAT:
            await _refused(_chat(client, **{field: value}), field)
        out = await _chat(client, max_tokens=2, **ACCEPTED_CHAT)
        assert len(out.choices) == 2
        comp = {"model": "base", "prompt": "hi", "max_tokens": 2}
        await _refused(client.completions.create(**comp, echo=True), "echo")
        await _refused(client.completions.create(**comp, suffix="end"), "suffix")
        await _refused(client.completions.create(**comp, best_of=3), "best_of")
        ok = await client.completions.create(**comp, best_of=1, echo=False, user="u", seed=3)
        assert ok.choices[0].finish_reason
        # a field OpenAI does not define stays refused, by name
        r = await http.post("/v1/completions", json={**comp, "top_k": 5})
        assert r.status_code == 400 and "top_k" in r.json()["error"]["message"]

    drive(settings, go)


def test_json_body_without_json_content_type(tiny):
    """`curl -d` (form-urlencoded) or no content type: read as JSON from an API client (one that
    sends Authorization); refused with 415 otherwise, since a web page can send those types to
    a local server without a CORS preflight (cross-site request forgery)."""
    body = b'{"model": "sent", "input": ["good news"]}'
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    auth = {"Authorization": "Bearer any"}  # the server runs without keys: any value passes

    async def go(http, app):
        for headers in ({}, form, {"Content-Type": "text/plain"}):
            r = await http.post("/v1/classify", content=body, headers={**headers, **auth})
            assert r.status_code == 200, r.text
            r = await http.post("/v1/classify", content=body, headers=headers)
            assert r.status_code == 415, r.text
            assert "application/json" in r.json()["error"]["message"]
        r = await http.post("/v1/classify", content=b"model=sent", headers={**form, **auth})
        assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]

    run_app(settings_for(tiny), go)


class _ToolTokenizer:
    chat_template = "{% if m.role == 'tool' %}{{ m.tool_calls }}{% endif %}"


def test_tool_messages_go_through_a_template_that_has_them():
    messages = [
        ChatMessage(role="developer", content="be brief"),
        ChatMessage(
            role="assistant",
            content=None,
            tool_calls=[{"id": "c1", "type": "function", "function": {"name": "f"}}],
        ),
        ChatMessage(role="tool", content=[{"type": "text", "text": "42"}], tool_call_id="c1"),
    ]
    out = template_messages(messages, _ToolTokenizer())
    assert [m["role"] for m in out] == ["system", "assistant", "tool"]
    assert out[1]["content"] == "" and out[1]["tool_calls"][0]["id"] == "c1"
    assert out[2] == {"role": "tool", "content": "42", "tool_call_id": "c1"}


def test_penalties_follow_openai_formula():
    from types import SimpleNamespace

    import torch

    from honed.serve.engine.generation import SamplingParams
    from honed.serve.engine.logprobs import adjust_logits, token_logprobs

    def row(tokens, **params):
        job = SimpleNamespace(params=SamplingParams(max_tokens=8, **params))
        return SimpleNamespace(job=job, tokens=tokens)

    rows = [
        row([1, 1, 2], frequency_penalty=0.5, presence_penalty=1.0, logit_bias=((3, 2.0),)),
        row([1, 1, 2], logprobs=2),
    ]
    logits = torch.zeros(2, 5)
    out = adjust_logits(logits, rows)
    # token 1: seen twice -> 0.5*2 + 1.0; token 2: once -> 0.5 + 1.0; token 3: +2 bias
    assert out[0].tolist() == [0.0, -2.0, -1.5, 2.0, 0.0]
    assert out[1].tolist() == [0.0] * 5 and logits.abs().sum() == 0  # untouched, no copy change
    assert adjust_logits(logits, [rows[1]]) is logits  # nothing to do: the same tensor
    lps = token_logprobs(out, torch.tensor([3, 4]), rows)
    assert lps[0] is None
    token, lp, top = lps[1]
    assert token == 4 and lp == pytest.approx(-torch.log(torch.tensor(5.0)).item())
    assert len(top) == 2
