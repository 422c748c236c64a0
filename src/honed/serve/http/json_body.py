"""JSON bodies sent without a JSON content type, from API clients only.

`curl -d '{...}'` sends `application/x-www-form-urlencoded`, so a one-liner without
`-H "Content-Type: application/json"` would fail with a confusing "Input should be a valid
dictionary". No route here takes forms, so such a body (or one with no content type, or
`text/plain`) is read as JSON, but only when the request carries an `Authorization` header.

Why the condition: a web page can make a browser send exactly these content types to
`localhost` without a CORS preflight ("simple requests"), but never with an `Authorization`
header. Reading them as JSON for anyone would let any page the operator visits call a local
server that runs without keys (cross-site request forgery). Without the header they get a 415
naming the fix. Other content types pass through unchanged.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

#: What a browser may send cross-site without a preflight (b"": no content type at all).
_SIMPLE = {b"", b"application/x-www-form-urlencoded", b"text/plain", b"multipart/form-data"}


class JsonBodyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in {"POST", "PUT", "PATCH"}:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if kind not in _SIMPLE:
            await self.app(scope, receive, send)
        elif headers.get(b"authorization"):
            rest = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
            scope = {**scope, "headers": [*rest, (b"content-type", b"application/json")]}
            await self.app(scope, receive, send)
        else:
            await _unsupported(send, kind.decode("latin-1") or "none")


async def _unsupported(send: Send, kind: str) -> None:
    message = (
        f"Content-Type {kind!r} is not accepted without an Authorization header; send the body "
        "as JSON with Content-Type: application/json"
    )
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": "unsupported_media_type",
            }
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 415, "headers": headers})
    await send({"type": "http.response.body", "body": body})
