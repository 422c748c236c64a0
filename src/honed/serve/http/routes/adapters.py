"""Admin: POST /v1/adapters loads (or hot-swaps) an adapter, DELETE unloads it."""

from __future__ import annotations

from fastapi import APIRouter, Path

from honed.serve.engine.canary import HIDDEN
from honed.serve.engine.errors import Conflict, NotFound
from honed.serve.http.deps import AdminKey, ReadyEngine
from honed.serve.http.errors import ERROR_RESPONSES
from honed.serve.http.schemas import AdapterDeleted, AdapterInfo, AdapterLoadRequest
from honed.serve.http.tracking import audit

router = APIRouter(tags=["admin"])


@router.post("/v1/adapters", response_model=AdapterInfo, status_code=201, responses=ERROR_RESPONSES)
async def load_adapter(body: AdapterLoadRequest, engine: ReadyEngine, key: AdminKey) -> AdapterInfo:
    gen = engine.adapter_host()
    kind = next((k for mid, k, _ in engine.ids() if mid == body.name), None)
    if kind not in (None, "adapter"):  # an adapter id is replaced (hot swap); others are not
        raise Conflict(
            f"{body.name!r} is already served as a {kind} model; pick another adapter name",
            code="name_taken",
            param="name",
        )
    slot = await gen.load_adapter(body.name, body.source, body.sha256)
    await audit("adapter.loaded", key, name=body.name, source=slot.source, sha256=slot.sha256)
    return AdapterInfo(name=body.name, parent=gen.name, source=slot.source, sha256=slot.sha256)


@router.delete("/v1/adapters/{name}", response_model=AdapterDeleted, responses=ERROR_RESPONSES)
async def unload_adapter(
    engine: ReadyEngine, key: AdminKey, name: str = Path(..., min_length=1, max_length=100)
) -> AdapterDeleted:
    if name.endswith(HIDDEN):
        # A running canary's challenger: only DELETE /admin/canary/{model} removes it, so the
        # canary arm never points at an unloaded adapter.
        raise NotFound("adapter", name)
    await engine.adapter_host().unload_adapter(name)
    await audit("adapter.unloaded", key, name=name)
    return AdapterDeleted(name=name)
