"""Helpers to drive the app in tests (imported by the test modules)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from honed.serve.http.app import create_app
from honed.serve.http.auth import hash_key
from honed.serve.settings import ApiKeyEntry, ServeSettings

ADMIN_KEY = "hk-test-admin"
#: A key with both scopes: admin routes answer nothing else (see deps.require_admin).
ADMIN_ENTRY = ApiKeyEntry(name="admin", sha256=hash_key(ADMIN_KEY), scopes=["infer", "admin"])
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


def settings_for(tiny: dict[str, Any], **over: Any) -> ServeSettings:
    a = tiny["adapters"]
    models = [str(tiny["base"]), f"a0={a[0]}", f"a1={a[1]}", f"sent={tiny['clf']}"]
    return ServeSettings(**{"models": models, "max_wait_ms": 2.0, **over})


async def wait_ready(app, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not (app.state.engine is not None and app.state.engine.ready):
        if app.state.load_error:
            raise AssertionError(app.state.load_error)
        if time.monotonic() > end:
            raise AssertionError("server did not become ready")
        await asyncio.sleep(0.01)


def run_app(
    settings: ServeSettings,
    fn: Callable[[httpx.AsyncClient, Any], Awaitable[Any]],
    setup: Callable[[Any], None] | None = None,
    headers: dict | None = None,
    admin: bool = False,
) -> Any:
    """Start the app (lifespan + model load), run `fn(client, app)` in its event loop.
    ``admin``: the server gets ADMIN_ENTRY and the client sends its key on every request."""
    if admin:
        keys = [*settings.api_keys, ADMIN_ENTRY]
        settings = settings.model_copy(update={"api_keys": keys})
        headers = {**(headers or {}), **ADMIN_HEADERS}
    app = create_app(settings)
    if setup is not None:
        setup(app)

    async def main() -> Any:
        async with app.router.lifespan_context(app):
            await wait_ready(app)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://test", headers=headers, timeout=60
            ) as client:
                return await fn(client, app)

    return asyncio.run(main())


def chat_body(model: str, text: str = "hello", **kw: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 6,
        "temperature": 0,
        **kw,
    }


def tiny_llm(tiny: dict[str, Any]) -> tuple[Any, Any]:
    """The tiny Llama in float32 and its left-padding tokenizer, as the server loads them."""
    import torch

    from honed.serve.engine import loading

    model = loading.load_causal_lm(tiny["base"], "cpu", torch.float32)
    return model, loading.load_tokenizer(tiny["base"], "left")


def plain_greedy(model: Any, ids: Any, mask: Any, n: int) -> Any:
    """``model.generate``'s greedy ids for (B, T) prompts: what the fast paths must equal."""
    import torch

    with torch.inference_mode():
        return model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0
        )
