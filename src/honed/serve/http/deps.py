"""FastAPI dependencies as `Annotated` aliases: the engine, the settings and the caller's key.

All are `async def` although none awaits: FastAPI runs a plain `def` dependency in its thread
pool, and three such hops per request took ~30% of the server process's CPU samples under
load (py-spy, /v1/classify at concurrency 32).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from honed.serve.engine.core import Engine
from honed.serve.http.auth import ApiKey
from honed.serve.http.errors import APIError
from honed.serve.settings import ServeSettings

log = logging.getLogger("honed.serve")

# auto_error=False: AccessMiddleware already refused missing/wrong keys; this documents the
# bearer scheme in the OpenAPI schema so clients and fuzzers know to send it.
_bearer = HTTPBearer(auto_error=False, description="API key: 'Authorization: Bearer <key>'")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def get_settings(request: Request) -> ServeSettings:
    return request.app.state.settings


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


async def get_ready_engine(request: Request) -> Engine:
    engine: Engine | None = request.app.state.engine
    if engine is None or not engine.ready:
        retry = str(request.app.state.settings.retry_after_s)
        raise APIError(
            503,
            "model is loading; retry later",
            "server_error",
            "not_ready",
            headers={"Retry-After": retry},
        )
    return engine


def _caller(request: Request) -> ApiKey | None:
    if not request.app.state.keys.enabled:
        return None
    key = getattr(request.state, "api_key", None)
    if key is None:  # the middleware guarantees one; be safe anyway
        raise APIError(401, "missing API key", "authentication_error", "invalid_api_key")
    return key


async def require_infer(request: Request, _: Bearer) -> ApiKey | None:
    key = _caller(request)
    if key is not None and not key.scopes & {"infer", "admin"}:
        raise APIError(403, "this key lacks the 'infer' scope", "permission_error", "forbidden")
    return key


async def require_admin(request: Request, _: Bearer) -> ApiKey | None:
    if not request.app.state.settings.enable_admin:
        raise APIError(
            403, "admin routes are disabled on this server", "permission_error", "admin_disabled"
        )
    key = _caller(request)
    if key is None:
        return _keyless_admin(request)
    if "admin" not in key.scopes:
        raise APIError(403, "this key lacks the 'admin' scope", "permission_error", "forbidden")
    return key


def _keyless_admin(request: Request) -> None:
    """A server without keys runs admin routes only in insecure development mode."""
    if not request.app.state.settings.insecure_dev:
        raise APIError(
            403,
            "admin routes need an API key with the 'admin' scope, and this server has no keys: "
            "create one (`honed apikey create NAME --scopes infer,admin --file keys.yaml`) and "
            "restart with `--api-keys-file keys.yaml` (development only: --insecure-dev)",
            "permission_error",
            "admin_key_required",
        )
    log.warning(
        "INSECURE DEV MODE: admin call %s %s without an API key",
        request.method,
        request.url.path,
    )


SettingsDep = Annotated[ServeSettings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
ReadyEngine = Annotated[Engine, Depends(get_ready_engine)]
InferKey = Annotated[ApiKey | None, Depends(require_infer)]
AdminKey = Annotated[ApiKey | None, Depends(require_admin)]
