"""API keys (stored hashed), scopes, per-key rate limits, and the body-size limit.

`AccessMiddleware` (pure ASGI) runs before routing, so with keys configured nothing but
`/healthz` answers without a valid key: not the docs, not /metrics, not even a 404.
Route dependencies (`deps.InferKey`, `deps.AdminKey`) then check the key's scopes.

Keys travel in the `Authorization` header only: a query parameter named like a credential
(`?api_key=`, `?token=`, ...) is refused with 400, since URLs end up in proxies' and access
logs; `QueryKeyFilter` masks such parameters in uvicorn's access log all the same.

Rate limits count on the storage named by `rate_limit_storage` (`limits_store`): in memory per
process by default, in Redis shared by every replica.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import logging
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import yaml
from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from honed.serve.http.limits_store import Decision, SharedLimiter, rate_item
from honed.serve.settings import ApiKeyEntry, ServeConfigError, ServeSettings

OPEN_PATHS = frozenset({"/healthz"})
#: Query parameter names that look like credentials (refused, and masked in the access log).
_SECRET_NAME = re.compile(r"key|token|secret|passw(or)?d|auth|credential", re.IGNORECASE)
_SECRET_PARAM = re.compile(
    r"([?&][^=&\s\"]*(?:key|token|secret|passw(?:or)?d|auth|credential)[^=&\s\"]*=)[^&\s\"]*",
    re.IGNORECASE,
)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "hk-" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ApiKey:
    """An authenticated caller (what routes see; never the key itself)."""

    name: str
    scopes: frozenset[str]


class KeyStore:
    """Hashed keys; lookup compares every digest in constant time."""

    def __init__(
        self,
        entries: list[ApiKeyEntry],
        rate: float | None,
        burst: int,
        limiter: SharedLimiter | None = None,
    ) -> None:
        self.entries = entries
        self.limiter = limiter or SharedLimiter()
        # Each key's moving window (see limits_store.rate_item); keys without a rate: none.
        self.limits = {
            e.sha256: rate_item(r, burst) for e in entries if (r := e.rate_limit_rps or rate)
        }

    @classmethod
    def from_settings(
        cls, settings: ServeSettings, limiter: SharedLimiter | None = None
    ) -> KeyStore:
        entries = list(settings.api_keys)
        if settings.api_keys_file is not None:
            entries += read_keys_file(settings.api_keys_file)
        limiter = limiter or SharedLimiter.from_settings(settings)
        return cls(entries, settings.rate_limit_rps, settings.rate_limit_burst, limiter)

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def lookup(self, key: str) -> ApiKeyEntry | None:
        digest = hash_key(key)
        found = None
        for e in self.entries:  # no early exit: timing does not reveal which entry matched
            if hmac.compare_digest(digest, e.sha256):
                found = e
        return found

    async def throttle(self, entry: ApiKeyEntry) -> Decision:
        """Take one request from the key's budget (shared by every replica on Redis)."""
        item = self.limits.get(entry.sha256)
        if item is None:
            return Decision(True)
        return await self.limiter.hit(item, "rate", entry.name)


def read_keys_file(path: Path) -> list[ApiKeyEntry]:
    """`keys: [{name, sha256, scopes, rate_limit_rps}]` from YAML or JSON."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ServeConfigError(f"api keys file {path}: {err}") from None
    items = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ServeConfigError(f"api keys file {path}: expected a top-level 'keys:' list")
    try:
        return [ApiKeyEntry(**item) for item in items]
    except (TypeError, ValueError) as err:
        raise ServeConfigError(f"api keys file {path}: {err}") from None


def append_key(path: Path, name: str, scopes: list[str]) -> str:
    """Create a key, store its hash in `path`, return the key (shown once)."""
    key = new_key()
    entries = read_keys_file(path) if path.exists() else []
    if any(e.name == name for e in entries):
        raise ServeConfigError(f"{path}: a key named {name!r} exists already")
    entries.append(ApiKeyEntry(name=name, sha256=hash_key(key), scopes=scopes))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"keys": [e.model_dump(exclude_none=True) for e in entries]}))
    path.chmod(0o600)
    return key


class BodyTooLarge(HTTPException):
    """Raised from `receive`; FastAPI re-raises HTTPExceptions met while reading a body."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


def _error(status: int, message: str, type_: str, code: str, headers: dict | None = None):
    body = json.dumps(
        {"error": {"message": message, "type": type_, "param": None, "code": code}}
    ).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return body, hdrs


class AccessMiddleware:
    """Authenticate, rate-limit and cap the body of every HTTP request but /healthz."""

    def __init__(self, app: ASGIApp, keys: KeyStore, max_body: int, retry_after: int) -> None:
        self.app = app
        self.keys = keys
        self.max_body = max_body
        self.retry_after = retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = _key_in_query(scope)
        if refusal is None and scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if refusal is None:
            refusal = await self._authenticate(scope)
        if refusal is None:
            refusal = self._check_length(scope)
        if refusal is not None:
            await _send(send, *refusal)
            return
        await self._call_limited(scope, receive, send)

    async def _authenticate(self, scope: Scope) -> tuple | None:
        if not self.keys.enabled:
            return None
        key = _bearer(scope)
        entry = self.keys.lookup(key) if key else None
        if entry is None:
            why = "missing API key" if not key else "invalid API key"
            msg = f"{why}: send 'Authorization: Bearer <key>'"
            return (
                401,
                *_error(
                    401,
                    msg,
                    "authentication_error",
                    "invalid_api_key",
                    {"WWW-Authenticate": "Bearer"},
                ),
            )
        decision = await self.keys.throttle(entry)
        if not decision.allowed:
            return _throttled(decision)
        scope.setdefault("state", {})["api_key"] = ApiKey(entry.name, frozenset(entry.scopes))
        return None

    def _check_length(self, scope: Scope) -> tuple | None:
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_body
                except ValueError:
                    return (
                        400,
                        *_error(400, "bad Content-Length", "invalid_request_error", "bad_length"),
                    )
                if too_big:
                    return self._too_large()
        return None

    def _too_large(self) -> tuple:
        msg = f"request body exceeds {self.max_body} bytes"
        return (413, *_error(413, msg, "invalid_request_error", "body_too_large"))

    async def _call_limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Chunked bodies carry no Content-Length: count bytes as they arrive.
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _send(send, *self._too_large())


def _throttled(decision: Decision) -> tuple:
    """429 beyond the key's rate; 503 when the shared storage is down and the policy is
    `rate_limit_on_storage_error: closed`. Both with Retry-After."""
    headers = {"Retry-After": str(decision.retry_after)}
    if decision.unavailable:
        msg = "rate-limit storage unavailable; retry later"
        return (503, *_error(503, msg, "server_error", "rate_limit_unavailable", headers))
    msg = "rate limit reached for this key"
    return (429, *_error(429, msg, "rate_limit_error", "rate_limited", headers))


def _key_in_query(scope: Scope) -> tuple | None:
    """400 for a credential-like query parameter: keys go in the Authorization header."""
    query = scope.get("query_string", b"").decode("latin-1")
    names = [name for name, _ in parse_qsl(query, keep_blank_values=True)]
    found = next((n for n in names if _SECRET_NAME.search(n)), None)
    if found is None:
        return None
    msg = (
        f"credentials are not accepted in the URL (query parameter {found[:40]!r}): URLs end "
        "up in proxy and access logs; send 'Authorization: Bearer <key>' instead"
    )
    return (400, *_error(400, msg, "invalid_request_error", "key_in_query"))


def redact_query_secrets(text: str) -> str:
    """`?api_key=hk-...&x=1` -> `?api_key=[REDACTED]&x=1` (any credential-like name)."""
    return _SECRET_PARAM.sub(r"\1[REDACTED]", text)


class QueryKeyFilter(logging.Filter):
    """Masks credential-like query parameters in uvicorn's access log lines (the request
    line is one of the record's arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_query_secrets(a) if isinstance(a, str) else a for a in record.args
            )
        elif isinstance(record.msg, str):
            record.msg = redact_query_secrets(record.msg)
        return True


def access_log_config() -> dict[str, Any]:
    """uvicorn's default logging config with `QueryKeyFilter` on its access handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_query_keys"] = {"()": QueryKeyFilter}
    config["handlers"]["access"].setdefault("filters", []).append("redact_query_keys")
    return config


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            text = value.decode("latin-1").strip()
            if text.lower().startswith("bearer "):
                return text[7:].strip() or None
            return None
    return None


async def _send(send: Send, status: int, body: bytes, headers: list) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
