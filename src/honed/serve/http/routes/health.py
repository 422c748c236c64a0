"""GET /healthz (process alive; never needs a key), /readyz (weights loaded + forward pass),
GET /metrics (Prometheus text format, the app's own registry)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from honed.serve.http.deps import InferKey
from honed.serve.http.errors import ERROR_RESPONSES
from honed.serve.http.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={**ERROR_RESPONSES, 503: {"model": Health}})
async def readyz(request: Request, key: InferKey) -> JSONResponse:
    engine = request.app.state.engine
    if engine is None or not engine.ready:
        detail = request.app.state.load_error or "loading"
        body = Health(status="not ready", detail=detail).model_dump()
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse(Health(status="ready", models=[i for i, _, _ in engine.ids()]).model_dump())


@router.get(
    "/metrics",
    response_class=Response,
    responses={**ERROR_RESPONSES, 200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request, key: InferKey) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
