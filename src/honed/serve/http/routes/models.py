"""GET /v1/models: the base, its adapters (with `parent`) and the classifiers."""

from __future__ import annotations

from fastapi import APIRouter, Request

from honed.serve.http.deps import EngineDep, InferKey
from honed.serve.http.errors import ERROR_RESPONSES
from honed.serve.http.schemas import ModelCard, ModelList

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
async def list_models(request: Request, engine: EngineDep, key: InferKey) -> ModelList:
    created = request.app.state.started
    cards = (
        []
        if engine is None
        else [
            ModelCard(id=mid, created=created, root=parent or mid, parent=parent, kind=kind)
            for mid, kind, parent in engine.ids()
        ]
    )
    return ModelList(data=cards)
