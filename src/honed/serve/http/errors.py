"""Errors in the OpenAI error JSON shape; never a traceback, never a key.

The engine raises its own exceptions (honed.serve.engine.errors); `from_engine` gives each
kind its status here, so the engine knows nothing of HTTP.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from honed.serve.engine.errors import Conflict, EngineError, InvalidRequest, NotFound, QueueFull

log = logging.getLogger("honed.serve")


class ErrorBody(BaseModel):
    message: str = Field(..., description="What went wrong, in words.")
    type: str = Field(..., description="invalid_request_error, authentication_error, ...")
    param: str | None = Field(None, description="The request field at fault, if one is.")
    code: str | None = Field(None, description="A stable machine-readable code.")


class ErrorResponse(BaseModel):
    """OpenAI's error envelope: {"error": {message, type, param, code}}."""

    error: ErrorBody


class APIError(Exception):
    """Raised anywhere in the server; rendered as an OpenAI-shaped JSON error."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return error_response(
            self.status, self.message, self.type, self.code, self.param, self.headers
        )


def error_response(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def overloaded(retry_after: int, why: str = "server is at capacity") -> APIError:
    return APIError(
        503,
        f"{why}; retry later",
        "server_error",
        "overloaded",
        None,
        {"Retry-After": str(retry_after)},
    )


# The status of each kind of engine refusal (QueueFull: `overloaded`, 503 + Retry-After).
_ENGINE_STATUS: dict[type[EngineError], int] = {InvalidRequest: 400, NotFound: 404, Conflict: 409}


def from_engine(err: EngineError, retry_after: int) -> APIError:
    """The API error that answers an engine refusal."""
    if isinstance(err, QueueFull):
        return overloaded(retry_after, "request queue is full")
    status = next((s for kind, s in _ENGINE_STATUS.items() if isinstance(err, kind)), None)
    if status is None:  # a kind without a status here: a server bug, not the caller's
        log.error("engine error without an HTTP status: %r", err)
        return APIError(500, "internal server error", "server_error", "internal_error")
    return APIError(status, err.message, code=err.code, param=err.param)


# Every error status a route may answer, documented in the OpenAPI schema.
ERROR_RESPONSES: dict[int | str, dict] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in {
        400: "Invalid request",
        401: "Missing or wrong API key",
        403: "The key lacks the scope",
        404: "Unknown model or adapter",
        409: "Conflicting state",
        413: "Body too large",
        422: "Invalid request body",
        429: "Rate limited",
        500: "Internal error",
        503: "Overloaded or not ready",
        504: "Deadline passed",
    }.items()
}


def _validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    errors = err.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return (f"{param}: {msg}{more}" if param else f"{msg}{more}"), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError) -> JSONResponse:
        return from_engine(exc, request.app.state.settings.retry_after_s).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # OpenAI answers 400 for bad bodies; 422 stays documented for FastAPI's own schema.
        message, param = _validation_message(exc)
        return error_response(400, message, "invalid_request_error", "invalid_value", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(
            exc.status_code, message, "invalid_request_error", None, None, dict(exc.headers or {})
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)  # server log only, never the client
        return error_response(500, "internal server error", "server_error", "internal_error")
