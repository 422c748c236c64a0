"""POST /v1/chat/completions (OpenAI-compatible, optional SSE streaming)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from honed.serve.engine.generation import GenJob
from honed.serve.http import pipeline as g
from honed.serve.http.deps import InferKey, ReadyEngine, SettingsDep
from honed.serve.http.errors import ERROR_RESPONSES, APIError
from honed.serve.http.guards import GuardContext, run_input_guards
from honed.serve.http.implicit import caller_of
from honed.serve.http.schemas import ChatCompletion, ChatCompletionRequest
from honed.serve.http.tracking import Tracker

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
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        ctx = GuardContext(
            "chat", body.model, [m["content"] for m in messages], key.name if key else None
        )
        run_input_guards(request.app.state.input_guards, ctx)
        params = g.sampling_params(body, settings)
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
        return _stream(tracker, jobs, settings.request_timeout_s, guard, body, created)

    def build(done: list[GenJob]) -> dict[str, Any]:
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reason,
                "logprobs": None,
            }
            for i, text, reason in g.choices(done, guard or (lambda t: t))
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


def _stream(tracker: Tracker, jobs: list[GenJob], timeout: float, guard, body, created: int):
    def chunk(index: int | None, text: str | None, reason: str | None) -> dict[str, Any]:
        delta = {"content": text} if text is not None else {}
        return {
            "id": tracker.id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "choices": [
                {"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}
            ],
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
