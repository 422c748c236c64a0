"""POST /v1/completions (OpenAI legacy completions; one prompt or a list)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from honed.serve.http import pipeline
from honed.serve.http.deps import InferKey, ReadyEngine, SettingsDep
from honed.serve.http.errors import ERROR_RESPONSES
from honed.serve.http.routes import STREAM_DOC
from honed.serve.http.schemas import Completion, CompletionRequest

router = APIRouter(tags=["generation"])


@router.post(
    "/v1/completions",
    response_model=Completion,
    responses={**ERROR_RESPONSES, **STREAM_DOC},
    summary="Text completion (the model field names the base or an adapter)",
)
async def completions(
    body: CompletionRequest,
    request: Request,
    engine: ReadyEngine,
    settings: SettingsDep,
    key: InferKey,
) -> Any:
    return await pipeline.run(request, body, engine, settings, key)
