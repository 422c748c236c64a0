"""Every response carries an `X-Request-Id` header, errors included, and every inference
request that ends in an error is in the request log, even when it was refused before a route
ran (401/403/429 from the key check, 413 body too large, 415 content type, 400 for a body
that does not parse, 404 for an unknown model, a 500 from a bug).

The id is the one the request's Tracker chose (honed.serve.http.tracking: the client's
`X-Request-Id` when usable, else a fresh `<prefix>-<hex>`), so it equals the `id` of an OpenAI
body and of the request-log row. A request refused before a Tracker existed gets the client's
id or a fresh one here, and is recorded here (route, status; model "unknown").

Error bodies keep OpenAI's exact envelope `{"error": {message, type, param, code}}`: the id is
in the header only, where the `openai` client reads it (`APIStatusError.request_id`).

This is the outermost middleware, so a handler crash is answered here (500, with the id)
instead of by Starlette's server-error middleware, which would bypass the header.

Texts go to the request log capped (`log_texts`, settings.request_log_max_chars): a 750,000
character prompt is stored as its first 8,192 characters, a marker and its length.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from honed.serve.http.tracking import (
    REQUEST_ID_HEADER,
    Tracker,
    client_request_id,
    new_request_id,
)

log = logging.getLogger("honed.serve")

#: Ends a text cut for the request log; the row's extra holds the original length.
TRUNCATED = "...[truncated]"

_HEADER = REQUEST_ID_HEADER.lower().encode()
# Inference paths: (route label, id prefix). Errors elsewhere get the header, no log row.
INFERENCE_PATHS = {
    "/v1/chat/completions": ("chat", "chatcmpl"),
    "/v1/completions": ("completions", "cmpl"),
    "/v1/classify": ("classify", "cls"),
    "/invocations": ("invocations", "req"),
}


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Made here so every later copy of the scope shares this one dict.
        state: dict[str, Any] = scope.setdefault("state", {})
        state["client_request_id"] = client_request_id(_client_header(scope))
        route, prefix = INFERENCE_PATHS.get(scope.get("path", ""), (None, "req"))
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                rid = state.get("request_id") or state["client_request_id"]
                rid = state["request_id"] = rid or new_request_id(prefix)
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != _HEADER]
                message = {**message, "headers": [*headers, (_HEADER, rid.encode("ascii"))]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if status:  # the response started: nothing left to answer with
                raise
            log.exception("unhandled error")  # server log only, never the client
            await _internal_error(send_with_id)
        if route is not None and status >= 400 and not state.get("logged"):
            _record_refusal(scope, route, prefix, status, started)


def log_texts(settings: Any, **texts: str | None) -> dict[str, Any]:
    """Request-log fields for ``texts`` (``input=...``, ``output=...``), each cut at
    ``settings.request_log_max_chars``; a cut one ends with TRUNCATED and its length is in
    ``<name>_chars`` (an unknown key: the row's ``extra``)."""
    limit = settings.request_log_max_chars
    out: dict[str, Any] = {}
    for name, text in texts.items():
        out[name] = text
        if isinstance(text, str) and len(text) > limit:
            out[name] = text[:limit] + TRUNCATED
            out[f"{name}_chars"] = len(text)
    return out


def _client_header(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == _HEADER:
            return value.decode("latin-1")
    return None


async def _internal_error(send: Send) -> None:
    error = {"message": "internal server error", "type": "server_error"}
    body = json.dumps({"error": {**error, "param": None, "code": "internal_error"}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _record_refusal(scope: Scope, route: str, prefix: str, status: int, started: float) -> None:
    """Metrics and a request-log row for an inference request no Tracker recorded."""
    try:
        rid = scope["state"]["request_id"]  # the id the client saw
        tracker = Tracker(Request(scope), route, "", prefix)
        tracker.id = scope["state"]["request_id"] = rid
        tracker.started = started
        tracker.finish(status, str(status))
    except Exception:  # recording is an add-on: it must never break serving
        log.exception("recording a refused request failed")
