"""Admin actions on a running server land in the hash-chained audit log."""

from __future__ import annotations

from tests.unit.serve._serve_support import run_app, settings_for

from honed.security.audit import audit_log
from honed.serve.http.auth import hash_key
from honed.serve.settings import ApiKeyEntry

ADMIN = "hk-admin-secret"
KEYS = [ApiKeyEntry(name="ops", sha256=hash_key(ADMIN), scopes=["admin"])]


def test_adapter_and_canary_actions_are_audited(tiny):
    auth = {"Authorization": f"Bearer {ADMIN}"}
    adapter = str(tiny["adapters"][2])
    canary = {"model": "sent", "challenger": str(tiny["clf"]), "weight": 0.5}

    async def go(c, app):
        codes = [
            (await c.post("/v1/adapters", json={"name": "a2", "source": adapter})).status_code,
            (await c.delete("/v1/adapters/a2")).status_code,
            (await c.post("/admin/canary", json=canary)).status_code,
            (await c.post("/admin/canary/sent/promote", json={})).status_code,
            (await c.post("/admin/canary", json=canary)).status_code,
            (await c.delete("/admin/canary/sent")).status_code,
            (await c.delete("/admin/canary/nope")).status_code,  # refused: nothing audited
        ]
        return codes

    codes = run_app(settings_for(tiny, api_keys=KEYS), go, headers=auth)
    assert codes[:-1] == [201, 200, 201, 200, 201, 200] and codes[-1] >= 400
    log = audit_log()
    rows = list(log.rows())
    assert [r["event"] for r in rows] == [
        "adapter.loaded",
        "adapter.unloaded",
        "canary.started",
        "canary.promoted",
        "canary.started",
        "canary.rolled_back",
    ]
    assert {r["actor"] for r in rows} == {"key:ops"}
    assert rows[0]["name"] == "a2" and len(rows[0]["sha256"]) == 64
    assert rows[2]["model"] == "sent" and rows[2]["challenger"] == str(tiny["clf"])
    assert rows[3]["challenger_version"] == rows[2]["challenger_version"]
    assert log.verify().ok
