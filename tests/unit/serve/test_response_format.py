"""`response_format` json_object / json_schema, through the `openai` client: a matching answer
is served, a mismatch is a 422 naming the choice and the schema's complaint, streamed or not."""

from __future__ import annotations

import pytest
from pydantic import BaseModel
from tests.unit.serve._serve_support import run_app, settings_for
from transformers import AutoTokenizer

openai = pytest.importorskip("openai")
HELLO = [{"role": "user", "content": "hello"}]


class Answer(BaseModel):
    value: int


def _schema(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def drive(tiny, fn):
    async def go(http, app):
        client = openai.AsyncOpenAI(
            base_url="http://test/v1", api_key="unused", http_client=http, max_retries=0
        )
        return await fn(client)

    return run_app(settings_for(tiny), go)


def test_json_answers_validated_before_they_leave(tiny):
    one = AutoTokenizer.from_pretrained(tiny["base"]).convert_tokens_to_ids("1")
    digits = {"logit_bias": {str(one): 100}}  # the answer is "111111": a JSON integer

    async def go(client):
        kw = {"model": "base", "messages": HELLO, "max_tokens": 6, "temperature": 0}
        ok = await client.chat.completions.create(
            **kw, **digits, response_format=_schema({"type": "integer", "minimum": 1})
        )
        assert ok.choices[0].message.content == "111111"
        assert ok.choices[0].finish_reason == "length"

        with pytest.raises(openai.UnprocessableEntityError) as err:
            await client.chat.completions.create(
                **kw, **digits, response_format=_schema({"type": "string"})
            )
        body = err.value.body
        assert body["code"] == "json_schema_mismatch" and body["param"] == "response_format"
        assert "choice 0" in body["message"] and "is not of type 'string'" in body["message"]
        assert err.value.request_id  # the log row to look at

        with pytest.raises(openai.UnprocessableEntityError, match="not of type 'object'"):
            await client.chat.completions.create(
                **kw, **digits, response_format={"type": "json_object"}
            )
        with pytest.raises(openai.UnprocessableEntityError) as err:  # random text
            await client.chat.completions.create(**kw, response_format={"type": "json_object"})
        assert err.value.body["code"] == "invalid_json"

        # streamed: held until the choice ends, then sent whole; a mismatch is an error event
        stream = await client.chat.completions.create(
            **kw, **digits, stream=True, response_format=_schema({"type": "integer"})
        )
        parts = [c.choices[0].delta.content async for c in stream if c.choices]
        assert [p for p in parts if p] == ["111111"]
        stream = await client.chat.completions.create(
            **kw, **digits, stream=True, response_format=_schema({"type": "string"})
        )
        with pytest.raises(openai.APIError, match="does not match response_format"):
            async for _ in stream:
                pass

        # the client's structured-output helper: a pydantic model becomes a strict json_schema
        with pytest.raises(openai.UnprocessableEntityError, match="not of type 'object'"):
            await client.chat.completions.parse(**kw, **digits, response_format=Answer)

        for bad, words in [
            (_schema({"type": 5}), "not a JSON Schema"),
            ({"type": "json_schema"}, "json_schema must be an object"),
            ({"type": "grammar"}, "grammar"),
        ]:
            with pytest.raises(openai.BadRequestError, match=words):
                await client.chat.completions.create(**kw, response_format=bad)

    drive(tiny, go)
