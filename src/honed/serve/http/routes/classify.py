"""POST /v1/classify: a batch of texts in, labels and scores out (micro-batched)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from honed.serve.http import pipeline
from honed.serve.http.deps import InferKey, ReadyEngine, SettingsDep
from honed.serve.http.errors import ERROR_RESPONSES
from honed.serve.http.schemas import ClassifyRequest, ClassifyResponse

router = APIRouter(tags=["classification"])


@router.post("/v1/classify", response_model=ClassifyResponse, responses=ERROR_RESPONSES)
async def classify(
    body: ClassifyRequest,
    request: Request,
    engine: ReadyEngine,
    settings: SettingsDep,
    key: InferKey,
) -> Any:
    return await pipeline.run(request, body, engine, settings, key)
