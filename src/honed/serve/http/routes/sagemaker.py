"""SageMaker's container contract (enabled by `sagemaker: true`): GET /ping, POST /invocations.

/invocations takes the body of one of the OpenAI-style routes and dispatches on its shape:
`messages` -> chat completion, `prompt` -> completion, `input` -> classification.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from honed.serve.http import pipeline
from honed.serve.http.deps import InferKey, ReadyEngine, SettingsDep
from honed.serve.http.errors import ERROR_RESPONSES, APIError
from honed.serve.http.schemas import ChatCompletionRequest, ClassifyRequest, CompletionRequest

router = APIRouter(tags=["sagemaker"])

_BODIES = (
    ("messages", ChatCompletionRequest),
    ("prompt", CompletionRequest),
    ("input", ClassifyRequest),
)


@router.get("/ping", responses=ERROR_RESPONSES)
async def ping(engine: ReadyEngine, key: InferKey) -> JSONResponse:
    return JSONResponse({"status": "ready"})


@router.post("/invocations", responses=ERROR_RESPONSES)
async def invocations(
    request: Request,
    engine: ReadyEngine,
    settings: SettingsDep,
    key: InferKey,
    body: Annotated[dict[str, Any], Body(description="A chat, completion or classify body.")],
) -> Any:
    for field, model in _BODIES:
        if field in body:
            try:
                parsed = model.model_validate(body)
            except ValidationError as err:
                first = err.errors()[0]
                loc = ".".join(str(p) for p in first["loc"]) or None
                raise APIError(400, f"{loc}: {first['msg']}", param=loc) from None
            return await pipeline.run(request, parsed, engine, settings, key)
    raise APIError(400, "body needs 'messages' (chat), 'prompt' (completion) or 'input' (classify)")
