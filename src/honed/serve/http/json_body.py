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

JSON bodies are also checked before any route sees them (`hostile_json`): bytes that are not
UTF-8, a lone UTF-16 surrogate escape (`"\\ud800"`: valid JSON, but no text; tokenizers and
the request log choke on it) and the non-standard constants NaN / Infinity get a 400 naming
the problem and the field. The body is already capped by AccessMiddleware (max_body_bytes);
the check costs one UTF-8 decode and one regex scan, and a full parse only when the scan
finds a suspect escape or constant.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: What a browser may send cross-site without a preflight (b"": no content type at all).
_SIMPLE = {b"", b"application/x-www-form-urlencoded", b"text/plain", b"multipart/form-data"}
#: What may make a body hostile; a body without any of these is only decoded.
_SUSPECT = re.compile(rb"\\u[dD][89a-fA-F]|NaN|Infinity")


class _Constant(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _Constant(name)


def _surrogate_at(data: Any, path: str = "") -> str | None:
    """The dotted path of the first string (or key) holding a lone surrogate, else None."""
    stack: list[tuple[str, Any]] = [(path, data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")  # C speed; fails only on surrogates
            except UnicodeEncodeError:
                return where or "body"
        elif isinstance(value, dict):
            for k, v in value.items():
                stack.append((f"{where}.{k}" if where else str(k), k))
                stack.append((f"{where}.{k}" if where else str(k), v))
        elif isinstance(value, list):
            stack.extend((f"{where}.{i}" if where else str(i), v) for i, v in enumerate(value))
    return None


def hostile_json(body: bytes) -> tuple[str, str | None] | None:
    """(message, param) for a JSON body no route should see, else None. Malformed JSON is
    left to FastAPI's own 400."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"request body is not valid UTF-8 (byte {err.start}); send UTF-8 JSON", None
    # `in` is a memchr-fast scan; the regex (slower, no literal prefix) runs only after a hit.
    if not any(part in body for part in (b"\\u", b"NaN", b"Infinity")):
        return None
    if not _SUSPECT.search(body):
        return None
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except _Constant as err:
        return f"request body holds {err}, which is not valid JSON; send a number", None
    except (ValueError, RecursionError):  # malformed or absurdly deep: FastAPI's 400
        return None
    where = _surrogate_at(data)
    if where is None:
        return None
    where = where if len(where) <= 200 else where[:200] + "..."
    message = (
        f"{where}: text holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not valid "
        "Unicode; send UTF-8 text"
    )
    return message, where


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
            if kind == b"application/json" or kind.endswith(b"+json"):
                await self._checked(scope, receive, send)
            else:
                await self.app(scope, receive, send)
        elif headers.get(b"authorization"):
            rest = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
            scope = {**scope, "headers": [*rest, (b"content-type", b"application/json")]}
            await self._checked(scope, receive, send)
        else:
            await _unsupported(send, kind.decode("latin-1") or "none")

    async def _checked(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the whole body (capped upstream), refuse a hostile one, else replay it."""
        messages: list[Message] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
        problem = hostile_json(body)
        if problem is not None:
            await _send_error(send, 400, problem[0], "invalid_body", problem[1])
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


async def _unsupported(send: Send, kind: str) -> None:
    message = (
        f"Content-Type {kind!r} is not accepted without an Authorization header; send the body "
        "as JSON with Content-Type: application/json"
    )
    await _send_error(send, 415, message, "unsupported_media_type")


async def _send_error(
    send: Send, status: int, message: str, code: str, param: str | None = None
) -> None:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
