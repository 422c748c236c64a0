"""JSON bodies sent without a JSON content type (`curl -d` says form-urlencoded).

FastAPI parses a body as JSON only when the request says `application/json` (and, with
`strict_content_type=False`, when it says nothing). `curl -d '{...}'` sends
`application/x-www-form-urlencoded`, so the README's one-liners would fail with a confusing
"Input should be a valid dictionary". No route here takes forms: such bodies are read as JSON,
and one that is not JSON gets the usual 400 "JSON decode error".
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

_AS_JSON = {b"application/x-www-form-urlencoded", b"text/plain"}


class JsonBodyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") in {"POST", "PUT", "PATCH"}:
            scope = {**scope, "headers": [_as_json(k, v) for k, v in scope["headers"]]}
        await self.app(scope, receive, send)


def _as_json(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    if name.lower() == b"content-type" and value.split(b";")[0].strip().lower() in _AS_JSON:
        return name, b"application/json"
    return name, value
