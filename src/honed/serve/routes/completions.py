"""POST /v1/completions (OpenAI legacy completions; one prompt or a list)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from honed.serve.deps import InferKey, ReadyEngine, SettingsDep
from honed.serve.errors import ERROR_RESPONSES, APIError
from honed.serve.generation import GenJob
from honed.serve.guards import GuardContext, run_input_guards
from honed.serve.implicit import caller_of
from honed.serve.logprobs import completion_logprobs
from honed.serve.openai_fields import check_ids, token_prompts
from honed.serve.routes import _generate as g
from honed.serve.routes.chat import _STREAM_DOC
from honed.serve.schemas import Completion, CompletionRequest
from honed.serve.tracking import Tracker

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
    token_ids = token_prompts(body.prompt)
    try:
        gen = engine.generator_for(body.model)
        vocab = g.vocab_size(gen)
        prompts = _texts(body.prompt, token_ids, gen.tokenizer, vocab)
        ctx = GuardContext("completions", body.model, prompts, key.name if key else None)
        run_input_guards(request.app.state.input_guards, ctx)
        params = g.sampling_params(body, settings, vocab)
        if len(prompts) * params.n > settings.max_batch_size * 4:
            raise APIError(400, "too many prompts x n for one request", param="prompt")
        ids = token_ids or [gen.encode_text(p) for p in prompts]
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
        return _stream(tracker, jobs, settings.request_timeout_s, guard, body, created, gen)

    def build(done: list[GenJob]) -> dict[str, Any]:
        choices = [
            {
                "index": i,
                "text": text,
                "finish_reason": reason,
                "logprobs": None if lps is None else completion_logprobs(gen.tokenizer, lps)[0],
            }
            for i, text, reason, lps in g.choices(done, guard or (lambda t: t))
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


def _texts(prompt: Any, token_ids: list[list[int]] | None, tokenizer: Any, vocab: int) -> list:
    """The prompts as text (token-array prompts decoded, for guards and the request log)."""
    if token_ids is None:
        return [prompt] if isinstance(prompt, str) else list(prompt)
    for one in token_ids:
        check_ids(one, vocab, "prompt")
    return [tokenizer.decode(one) for one in token_ids]


def _stream(tracker: Tracker, jobs: list[GenJob], timeout: float, guard, body, created: int, gen):
    offsets: dict[int, int] = {}  # choice index -> text_offset of its next token

    def chunk(
        index: int | None, text: str | None, reason: str | None, entries: list | None = None
    ) -> dict[str, Any]:
        lps = None
        if body.logprobs is not None and entries:
            lps, offsets[index] = completion_logprobs(gen.tokenizer, entries, offsets.get(index, 0))
        return {
            "id": tracker.id,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [
                {"index": index, "text": text or "", "finish_reason": reason, "logprobs": lps}
            ],
        }

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return g.streaming_response(tracker, jobs, timeout, guard, chunk, include_usage, lambda: [])
