"""Admin: canary and shadow serving of a model id (honed.serve.engine.canary).

POST   /admin/canary                  load a challenger beside the primary, start the split
GET    /admin/canary                  per model: primary, canary, requests per arm
POST   /admin/canary/{model}/promote  the challenger becomes the primary (old one unloaded)
DELETE /admin/canary/{model}          roll back: the challenger is unloaded

Swaps never fail a request: requests in flight finish on the arm they started on.
Like every POST here, promote is sent with `Content-Type: application/json` (any body, e.g.
`{}`): a bodiless form POST from a web page must not promote anything on a keyless server.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from honed.serve.engine import rollout
from honed.serve.engine.canary import STICKY
from honed.serve.http.deps import AdminKey, ReadyEngine
from honed.serve.http.errors import ERROR_RESPONSES, APIError
from honed.serve.http.tracking import audit

router = APIRouter(tags=["admin"])


class CanaryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(
        ..., min_length=1, max_length=200, description="The served API id (classifier/adapter)."
    )
    challenger: str = Field(
        ...,
        min_length=1,
        max_length=1024,
        description="What to load beside it: a registry ref (NAME/4, NAME@challenger) or folder.",
    )
    weight: float | None = Field(
        None,
        ge=0,
        le=1,
        description="canary: share of requests the challenger answers (default 0.1); "
        "shadow: share of requests copied to it (default 1.0).",
    )
    mode: Literal["canary", "shadow"] = Field(
        "canary",
        description="canary: the challenger answers part of the traffic; shadow: it sees a "
        "copy, its answers are only logged (arm 'shadow', the same request id).",
    )
    sticky: str | None = Field(
        None,
        pattern=STICKY.pattern,
        description="null: random per request; 'api_key': per caller (API key name, else "
        "client address); 'header:X-User-Id': per value of that header.",
    )


class PrimaryState(BaseModel):
    version: str | None = Field(None, description="Registry version (NAME/3); None: a folder.")
    digest: str | None = Field(None, description="sha256 of the weights (16 hex digits).")
    requests: int = Field(..., description="Requests routed to it since the canary started.")


class CanaryState(BaseModel):
    challenger: str
    version: str | None
    digest: str | None
    mode: str
    weight: float
    sticky: str | None
    started_at: str
    requests: int = Field(..., description="Requests the challenger answered.")
    shadow_requests: int = Field(..., description="Copies sent to it (shadow mode).")
    shadow_errors: int = Field(..., description="Copies that failed or timed out.")
    shadow_dropped: int = Field(..., description="Copies not sent: its queue was full.")


class ModelRollout(BaseModel):
    model: str
    kind: str
    primary: PrimaryState
    canary: CanaryState | None = None


class RolloutList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelRollout]


ModelId = Path(..., min_length=1, max_length=200, description="The served API id.")


def _one(engine, model_id: str) -> ModelRollout:
    found = [m for m in rollout.state(engine) if m["model"] == model_id]
    return ModelRollout.model_validate(found[0])


def _audited(engine, model_id: str) -> dict:
    """What the audit log keeps of a model's rollout: both arms' versions (or digests)."""
    found = [m for m in rollout.state(engine) if m["model"] == model_id]
    if not found:
        return {"model": model_id}
    state = ModelRollout.model_validate(found[0])
    arm = state.canary
    return {
        "model": model_id,
        "primary": state.primary.version or state.primary.digest,
        "challenger": arm.challenger if arm else None,
        "challenger_version": (arm.version or arm.digest) if arm else None,
        "mode": arm.mode if arm else None,
        "weight": arm.weight if arm else None,
    }


@router.post(
    "/admin/canary", response_model=ModelRollout, status_code=201, responses=ERROR_RESPONSES
)
async def start_canary(body: CanaryRequest, engine: ReadyEngine, key: AdminKey) -> ModelRollout:
    await rollout.open_canary(
        engine, body.model, body.challenger, body.weight, body.mode, body.sticky
    )
    await audit("canary.started", key, **_audited(engine, body.model))
    return _one(engine, body.model)


@router.get("/admin/canary", response_model=RolloutList, responses=ERROR_RESPONSES)
async def canary_state(engine: ReadyEngine, key: AdminKey) -> RolloutList:
    return RolloutList(data=[ModelRollout.model_validate(m) for m in rollout.state(engine)])


@router.post(
    "/admin/canary/{model}/promote", response_model=ModelRollout, responses=ERROR_RESPONSES
)
async def promote_canary(engine: ReadyEngine, key: AdminKey, model: str = ModelId) -> ModelRollout:
    before = _audited(engine, model)  # the challenger's name is gone once promoted
    await rollout.promote(engine, model)
    await audit("canary.promoted", key, **before)
    return _one(engine, model)


@router.delete("/admin/canary/{model}", response_model=ModelRollout, responses=ERROR_RESPONSES)
async def rollback_canary(engine: ReadyEngine, key: AdminKey, model: str = ModelId) -> ModelRollout:
    before = _audited(engine, model)
    await rollout.rollback(engine, model)
    await audit("canary.rolled_back", key, **before)
    return _one(engine, model)


@router.api_route(
    "/admin/canary", methods=["PUT", "PATCH", "DELETE", "OPTIONS"], include_in_schema=False
)
async def other_methods() -> None:
    # Two routes share the path; without this, a 405 would list only the first one's method.
    raise APIError(405, "Method Not Allowed", headers={"Allow": "GET, POST"})
