"""Access: the auth matrix, scopes, rate limits, body limits, keys file, no key echoes."""

from __future__ import annotations

import pytest
from tests.unit.serve._serve_support import chat_body, run_app, settings_for

from honed.serve.http.auth import append_key, hash_key, read_keys_file
from honed.serve.settings import ApiKeyEntry, ServeConfigError

INFER, ADMIN, WRONG = "hk-infer-secret", "hk-admin-secret", "hk-wrong-secret"
KEYS = [
    ApiKeyEntry(name="app", sha256=hash_key(INFER), scopes=["infer"]),
    ApiKeyEntry(name="ops", sha256=hash_key(ADMIN), scopes=["admin"]),
]

# (method, path, json) for every route; admin routes last.
INFER_ROUTES = [
    ("POST", "/v1/chat/completions", chat_body("a0", max_tokens=2)),
    ("POST", "/v1/completions", {"model": "base", "prompt": "hi", "max_tokens": 2}),
    ("POST", "/v1/classify", {"model": "sent", "input": "hi"}),
    ("GET", "/v1/models", None),
    ("GET", "/readyz", None),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
    ("GET", "/docs", None),
    ("GET", "/no/such/route", None),
]


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def test_auth_matrix(tiny):
    adapter = str(tiny["adapters"][2])
    admin_routes = [
        ("POST", "/v1/adapters", {"name": "a2", "source": adapter}),
        ("DELETE", "/v1/adapters/a2", None),
    ]

    async def call(c, method, path, body, key):
        return await c.request(method, path, json=body, headers=_auth(key))

    async def go(c, app):
        assert (await c.get("/healthz")).status_code == 200  # the one open route
        for method, path, body in INFER_ROUTES + admin_routes:
            for key in (None, WRONG):
                r = await call(c, method, path, body, key)
                assert r.status_code == 401, (method, path, key, r.status_code)
                assert r.json()["error"]["type"] == "authentication_error"
                assert WRONG not in r.text and "Traceback" not in r.text
        for method, path, body in INFER_ROUTES[:-1]:
            r = await call(c, method, path, body, INFER)
            assert r.status_code == 200, (path, r.text)
        for method, path, body in admin_routes:
            r = await call(c, method, path, body, INFER)
            assert r.status_code == 403, (path, r.text)
            assert r.json()["error"]["type"] == "permission_error"
        r = await call(c, *admin_routes[0], ADMIN)
        assert r.status_code == 201, r.text
        r = await call(c, *admin_routes[1], ADMIN)
        assert r.status_code == 200, r.text
        r = await call(c, *INFER_ROUTES[0], ADMIN)  # admin may infer too
        assert r.status_code == 200
        assert (await call(c, "GET", "/no/such/route", None, INFER)).status_code == 404

    run_app(settings_for(tiny, api_keys=KEYS), go)


def test_openapi_documents_bearer_security(tiny):
    async def go(c, app):
        spec = (await c.get("/openapi.json", headers=_auth(INFER))).json()
        assert "HTTPBearer" in spec["components"]["securitySchemes"]
        assert spec["paths"]["/v1/chat/completions"]["post"]["security"]

    run_app(settings_for(tiny, api_keys=KEYS), go)


def test_rate_limit_per_key(tiny):
    async def go(c, app):
        codes = [(await c.get("/v1/models", headers=_auth(INFER))).status_code for _ in range(6)]
        assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
        limited = await c.get("/v1/models", headers=_auth(INFER))
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["type"] == "rate_limit_error"
        # Another key has its own bucket.
        assert (await c.get("/v1/models", headers=_auth(ADMIN))).status_code == 200

    run_app(settings_for(tiny, api_keys=KEYS, rate_limit_rps=0.01, rate_limit_burst=3), go)


def test_body_size_limits(tiny):
    async def go(c, app):
        big = chat_body("a0", text="x" * 5000)
        r = await c.post("/v1/chat/completions", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        async def chunks():
            for _ in range(10):
                yield b"x" * 1000

        r = await c.post(
            "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413, r.text
        assert (await c.post("/v1/chat/completions", json=chat_body("a0"))).status_code == 200

    run_app(settings_for(tiny, max_body_bytes=2048), go)


def test_keys_file_roundtrip(tmp_path, tiny):
    path = tmp_path / "keys.yaml"
    key = append_key(path, "ci", ["infer"])
    assert key not in path.read_text() and hash_key(key) in path.read_text()
    assert read_keys_file(path)[0].scopes == ["infer"]
    with pytest.raises(ServeConfigError, match="exists already"):
        append_key(path, "ci", ["infer"])

    async def go(c, app):
        assert (await c.get("/v1/models")).status_code == 401
        assert (await c.get("/v1/models", headers=_auth(key))).status_code == 200

    run_app(settings_for(tiny, api_keys_file=path), go)


def test_bad_keys_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "keys.yaml"
    bad.write_text("keys: [{name: x, sha256: nothex}]")
    with pytest.raises(ServeConfigError, match=r"keys\.yaml"):
        read_keys_file(bad)
    bad.write_text("- just a list")
    with pytest.raises(ServeConfigError, match="'keys:' list"):
        read_keys_file(bad)
