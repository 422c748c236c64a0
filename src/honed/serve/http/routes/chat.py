"""POST /v1/chat/completions (OpenAI chat completions; the model field names the base or an
adapter)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from honed.serve.http import pipeline
from honed.serve.http.deps import InferKey, ReadyEngine, SettingsDep
from honed.serve.http.errors import ERROR_RESPONSES
from honed.serve.http.routes import STREAM_DOC
from honed.serve.http.schemas import ChatCompletion, ChatCompletionRequest

router = APIRouter(tags=["generation"])


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={**ERROR_RESPONSES, **STREAM_DOC},
    summary="Chat completion (the model field names the base or an adapter)",
)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    engine: ReadyEngine,
    settings: SettingsDep,
    key: InferKey,
) -> Any:
    return await pipeline.run(request, body, engine, settings, key)
