"""POST /v1/completions (OpenAI legacy completions; one prompt or a list)."""

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
from honed.serve.http.routes.chat import _STREAM_DOC
from honed.serve.http.schemas import Completion, CompletionRequest
from honed.serve.http.tracking import Tracker

router = APIRouter(tags=["generation"])


@router.post(
    "/v1/completions",
    response_model=Completion,
    responses={**ERROR_RESPONSES, **_STREAM_DOC},
    summary="Text completion (the model field names the base or an adapter)",
)
async def completions(
    body: CompletionRequest,
    request: Request,
    engine: ReadyEngine,
    settings: SettingsDep,
    key: InferKey,
) -> Any:
    tracker = Tracker(request, "completions", body.model, "cmpl")
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    try:
        gen = engine.generator_for(body.model)
        ctx = GuardContext("completions", body.model, prompts, key.name if key else None)
        run_input_guards(request.app.state.input_guards, ctx)
        params = g.sampling_params(body, settings)
        if len(prompts) * params.n > settings.max_batch_size * 4:
            raise APIError(400, "too many prompts x n for one request", param="prompt")
        ids = [gen.encode_text(p) for p in prompts]
        for one in ids:
            g.check_prompt(one, settings)
        jobs = g.submit_all(gen, ids, body.model, params, settings.retry_after_s)
    except APIError as err:
        tracker.finish(err.status, err.code)
        raise
    tracker.records = [{"input": p} for p in prompts]
    tracker.watch_regenerate(caller_of(request, key.name if key else None), prompts)
    created = int(time.time())
    guard = g.output_guard(request, ctx)
    if body.stream:
        return _stream(tracker, jobs, settings.request_timeout_s, guard, body.model, created)

    def build(done: list[GenJob]) -> dict[str, Any]:
        choices = [
            {"index": i, "text": text, "finish_reason": reason, "logprobs": None}
            for i, text, reason in g.choices(done, guard or (lambda t: t))
        ]
        n = done[0].params.n
        for p, rec in enumerate(tracker.records):
            rec["output"] = choices[p * n]["text"]
        return {
            "id": tracker.id,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": choices,
            "usage": g.usage(done),
        }

    return await g.respond(request, tracker, jobs, settings.request_timeout_s, build)


def _stream(tracker: Tracker, jobs: list[GenJob], timeout: float, guard, model: str, created: int):
    def chunk(index: int | None, text: str | None, reason: str | None) -> dict[str, Any]:
        return {
            "id": tracker.id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": index, "text": text or "", "finish_reason": reason, "logprobs": None}
            ],
        }

    return g.streaming_response(tracker, jobs, timeout, guard, chunk, False, lambda: [])
