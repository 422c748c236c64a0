"""POST /v1/chat/completions (OpenAI-compatible, optional SSE streaming)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from honed.serve.deps import InferKey, ReadyEngine, SettingsDep
from honed.serve.errors import ERROR_RESPONSES, APIError
from honed.serve.generation import GenJob
from honed.serve.guards import GuardContext, run_input_guards
from honed.serve.implicit import caller_of
from honed.serve.logprobs import chat_logprobs
from honed.serve.openai_fields import template_messages
from honed.serve.routes import _generate as g
from honed.serve.schemas import ChatCompletion, ChatCompletionRequest
from honed.serve.tracking import Tracker

router = APIRouter(tags=["generation"])

# SSE events are `data: <chunk JSON>` lines ending with `data: [DONE]`: no single JSON schema.
_STREAM_DOC = {
    200: {
        "content": {"text/event-stream": {}},
        "description": "JSON, or server-sent events when stream is true",
    }
}


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={**ERROR_RESPONSES, **_STREAM_DOC},
    summary="Chat completion (the model field names the base or an adapter)",
)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    engine: ReadyEngine,
    settings: SettingsDep,
    key: InferKey,
) -> Any:
    tracker = Tracker(request, "chat", body.model, "chatcmpl")
    try:
        gen = engine.generator_for(body.model)
        messages = template_messages(body.messages, gen.tokenizer)
        ctx = GuardContext(
            "chat", body.model, [m["content"] for m in messages], key.name if key else None
        )
        run_input_guards(request.app.state.input_guards, ctx)
        params = g.sampling_params(body, settings, g.vocab_size(gen))
        ids = gen.encode_chat(messages)
        g.check_prompt(ids, settings)
        jobs = g.submit_all(gen, [ids], body.model, params, settings.retry_after_s)
    except APIError as err:
        tracker.finish(err.status, err.code)
        raise
    tracker.records = [{"input": ctx.texts[-1]}]
    tracker.watch_regenerate(caller_of(request, key.name if key else None), messages)
    created = int(time.time())
    guard = g.output_guard(request, ctx)
    if body.stream:
        return _stream(tracker, jobs, settings.request_timeout_s, guard, body, created, gen)

    def build(done: list[GenJob]) -> dict[str, Any]:
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reason,
                "logprobs": None if lps is None else chat_logprobs(gen.tokenizer, lps),
            }
            for i, text, reason, lps in g.choices(done, guard or (lambda t: t))
        ]
        tracker.records[0]["output"] = choices[0]["message"]["content"]
        return {
            "id": tracker.id,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": choices,
            "usage": g.usage(done),
        }

    return await g.respond(request, tracker, jobs, settings.request_timeout_s, build)


def _stream(tracker: Tracker, jobs: list[GenJob], timeout: float, guard, body, created: int, gen):
    want_logprobs = bool(body.logprobs)

    def chunk(
        index: int | None, text: str | None, reason: str | None, entries: list | None = None
    ) -> dict[str, Any]:
        delta = {"content": text} if text is not None else {}
        lps = chat_logprobs(gen.tokenizer, entries) if want_logprobs and entries else None
        return {
            "id": tracker.id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "choices": [{"index": index, "delta": delta, "finish_reason": reason, "logprobs": lps}],
        }

    def first() -> list[dict[str, Any]]:
        # OpenAI opens each choice with the assistant role and empty content.
        out = []
        for i in range(body.n):
            c = chunk(i, "", None)
            c["choices"][0]["delta"]["role"] = "assistant"
            out.append(c)
        return out

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return g.streaming_response(tracker, jobs, timeout, guard, chunk, include_usage, first)
