"""POST /v1/classify: a batch of texts in, labels and scores out (micro-batched)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from honed.serve.engine.batching import QueueFull
from honed.serve.http.deps import InferKey, ReadyEngine, SettingsDep
from honed.serve.http.errors import ERROR_RESPONSES, APIError, overloaded
from honed.serve.http.guards import GuardContext, run_input_guards, run_output_guards
from honed.serve.http.pipeline import _disconnected
from honed.serve.http.schemas import ClassifyRequest, ClassifyResponse
from honed.serve.http.tracking import Tracker

router = APIRouter(tags=["classification"])


@router.post("/v1/classify", response_model=ClassifyResponse, responses=ERROR_RESPONSES)
async def classify(
    body: ClassifyRequest,
    request: Request,
    engine: ReadyEngine,
    settings: SettingsDep,
    key: InferKey,
) -> Any:
    tracker = Tracker(request, "classify", body.model, "cls")
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    try:
        if len(texts) > settings.max_classify_inputs:
            raise APIError(
                400,
                f"{len(texts)} inputs; this server's limit is {settings.max_classify_inputs}",
                param="input",
            )
        clf = engine.classifier_for(body.model)
        ctx = GuardContext("classify", body.model, texts, key.name if key else None)
        run_input_guards(request.app.state.input_guards, ctx)
        try:
            job = clf.submit(texts)
        except QueueFull:
            raise overloaded(settings.retry_after_s, "request queue is full") from None
        results = await _wait(request, job.future, settings.request_timeout_s)
    except APIError as err:
        tracker.finish(err.status, err.code)
        raise
    if results is None:
        tracker.finish(499, "client_disconnected")
        return Response(status_code=499)
    guards = request.app.state.output_guards
    data = []
    for i, r in enumerate(results):
        label = run_output_guards(guards, ctx, r["label"]) if guards else r["label"]
        data.append({"index": i, **r, "label": label})
    tracker.prompt_tokens = job.prompt_tokens
    tracker.records = [
        {"input": t, "output": d["label"], "label": d["label"], "score": d["score"]}
        for t, d in zip(texts, data, strict=True)
    ]
    tracker.finish(200)
    usage = {"prompt_tokens": job.prompt_tokens, "total_tokens": job.prompt_tokens}
    return {"object": "list", "model": body.model, "data": data, "usage": usage}


async def _wait(request: Request, future: asyncio.Future, timeout: float) -> list[dict] | None:
    """The results, None if the client left; 504 past the deadline."""
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait(
            {future, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        watcher.cancel()
    if future in done:
        if future.exception() is not None:
            raise APIError(500, "classification failed", "server_error", "inference_failed")
        return future.result()
    future.cancel()  # the worker skips cancelled jobs that have not started
    if watcher in done:
        return None
    raise APIError(504, "request deadline passed", "server_error", "timeout")
