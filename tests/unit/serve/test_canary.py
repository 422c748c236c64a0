"""Canary and shadow serving (honed.serve.engine.canary, /admin/canary): the split, sticky
callers, shadow copies logged but never returned, promotion / rollback / alias swaps under
concurrent load failing no request."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from tests.fixtures.tiny_models import build_tiny_classifier
from tests.unit.serve._serve_support import chat_body, run_app, settings_for

from honed.serve.engine import loading_aliases
from honed.serve.engine.canary import Canary, Traffic, route_key, split_point
from honed.serve.engine.rollout import replace_primary
from honed.serve.settings import ApiKeyEntry, ServeSettings

TEXT = "profits rose sharply"


@pytest.fixture(scope="module")
def clfs(tmp_path_factory) -> dict[str, Path]:
    """Three classifiers with the same labels and different weights, one with other labels."""
    root = tmp_path_factory.mktemp("canary-models")
    return {
        "v1": build_tiny_classifier(root / "v1", seed=0),
        "v2": build_tiny_classifier(root / "v2", seed=1),
        "v3": build_tiny_classifier(root / "v3", seed=2),
        "other": build_tiny_classifier(root / "other", labels=("bad", "good"), seed=3),
    }


class Recorder:
    """A request logger that keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def submit(self, record: dict[str, Any]) -> bool:
        self.records.append(record)
        return True


def clf_settings(clfs: dict[str, Path], **over: Any) -> ServeSettings:
    # insecure_dev: these tests call the admin routes on a server without keys (the key
    # checks of those routes are tested with keys in test_canary_routes_need_the_admin_scope).
    base = {
        "models": [f"sent={clfs['v1']}"],
        "max_wait_ms": 1.0,
        "request_log": False,
        "insecure_dev": True,
    }
    return ServeSettings(**{**base, **over})


def with_recorder(app) -> None:
    app.state.request_logger = Recorder()


async def score(client, **headers: str) -> float:
    r = await client.post("/v1/classify", json={"model": "sent", "input": TEXT}, headers=headers)
    assert r.status_code == 200, r.text
    return round(r.json()["data"][0]["score"], 6)


async def start(client, challenger: Path | str, **body: Any):
    payload = {"model": "sent", "challenger": str(challenger), **body}
    return await client.post("/admin/canary", json=payload)


# -- the split --------------------------------------------------------------------------------
def test_sticky_split_matches_the_weight_and_is_stable():
    canary = Canary("sent", None, "x", weight=0.3, sticky="header:X-User-Id")
    keys = [f"user-{i}" for i in range(20_000)]
    arms = [canary.pick(k) for k in keys]
    assert abs(arms.count("canary") / len(arms) - 0.3) < 0.02
    assert arms == [canary.pick(k) for k in keys]  # the same caller, the same arm
    # Raising the weight only moves callers towards the challenger.
    wider = Canary("sent", None, "x", weight=0.5)
    assert all(wider.pick(k) == "canary" for k, a in zip(keys, arms, strict=True) if a == "canary")
    assert 0 <= split_point("sent", "a") < 1 and split_point("sent", "a") != split_point("x", "a")


def test_random_split_matches_the_weight():
    random.seed(7)
    canary = Canary("sent", None, "x", weight=0.25)
    share = [canary.pick(None) for _ in range(20_000)].count("canary") / 20_000
    assert abs(share - 0.25) < 0.02
    assert {Canary("m", None, "x", weight=w).pick(None) for w in (0.0,)} == {"primary"}
    shadow = Canary("m", None, "x", weight=1.0, mode="shadow")
    assert shadow.pick(None) == "primary" and shadow.mirrors(None)


def test_route_key_follows_the_sticky_setting():
    traffic = Traffic()
    headers = {"X-User-Id": "u7"}
    assert route_key(traffic, "sent", "key:app", headers) is None  # no canary
    traffic.canaries["sent"] = Canary("sent", None, "x", weight=0.5, sticky="api_key")
    assert route_key(traffic, "sent", "key:app", headers) == "key:app"
    traffic.canaries["sent"].sticky = "header:X-User-Id"
    assert route_key(traffic, "sent", "key:app", headers) == "u7"
    assert route_key(traffic, "sent", "key:app", {}) is None  # no header: random


def test_canary_answers_its_share_through_the_api(clfs):
    async def go(client, app):
        primary = await score(client)
        r = await start(client, clfs["v2"], weight=0.5)
        assert r.status_code == 201, r.text
        assert r.json()["canary"]["weight"] == 0.5 and r.json()["canary"]["mode"] == "canary"
        scores = [await score(client) for _ in range(60)]
        state = (await client.get("/admin/canary")).json()["data"][0]
        metrics = (await client.get("/metrics")).text
        return primary, scores, state, metrics

    primary, scores, state, metrics = run_app(clf_settings(clfs), go)
    on_canary = sum(s != primary for s in scores)
    assert 0 < on_canary < 60  # both arms answered (p of failing ~1e-18)
    assert state["canary"]["requests"] == on_canary
    assert state["primary"]["requests"] == 60 - on_canary
    assert state["primary"]["digest"] != state["canary"]["digest"]
    assert 'honed_arm_requests_total{arm="canary",model="sent",version=""}' in metrics


def test_sticky_header_keeps_each_user_on_one_arm(clfs):
    async def go(client, app):
        primary = await score(client)
        r = await start(client, clfs["v2"], weight=0.5, sticky="header:X-User-Id")
        assert r.status_code == 201, r.text
        arms = {}
        for user in range(24):
            seen = {await score(client, **{"X-User-Id": f"u{user}"}) for _ in range(3)}
            assert len(seen) == 1, f"user u{user} answered by both arms"
            arms[user] = seen.pop() != primary
        return arms

    arms = run_app(clf_settings(clfs), go)
    assert any(arms.values()) and not all(arms.values())
    expected = {u: split_point("sent", f"u{u}") < 0.5 for u in range(24)}
    assert arms == expected


def test_sticky_api_key(clfs):
    from honed.serve.http.auth import hash_key

    keys = [ApiKeyEntry(name=f"k{i}", sha256=hash_key(f"secret-{i}")) for i in range(12)]
    keys.append(ApiKeyEntry(name="ops", sha256=hash_key("ops-secret"), scopes=["admin"]))

    async def go(client, app):
        auth = {"Authorization": "Bearer ops-secret"}
        primary = await score(client, **auth)
        r = await client.post(
            "/admin/canary",
            json={
                "model": "sent",
                "challenger": str(clfs["v2"]),
                "weight": 0.5,
                "sticky": "api_key",
            },
            headers=auth,
        )
        assert r.status_code == 201, r.text
        arms = {}
        for i in range(12):
            h = {"Authorization": f"Bearer secret-{i}"}
            seen = {await score(client, **h) for _ in range(2)}
            assert len(seen) == 1
            arms[f"k{i}"] = seen.pop() != primary
        return arms

    arms = run_app(clf_settings(clfs, api_keys=keys), go)
    assert arms == {k: split_point("sent", f"key:{k}") < 0.5 for k in arms}


# -- shadow -----------------------------------------------------------------------------------
def test_shadow_answers_are_logged_never_returned(clfs):
    async def go(client, app):
        primary = await score(client)
        r = await start(client, clfs["v2"], mode="shadow")
        assert r.status_code == 201 and r.json()["canary"]["weight"] == 1.0
        scores = [await score(client) for _ in range(8)]
        engine = app.state.engine
        for _ in range(200):  # the copies finish after the answers
            if engine.traffic.served["sent"]["shadow"] == 8 and not engine.traffic._shadows:
                break
            await asyncio.sleep(0.01)
        state = (await client.get("/admin/canary")).json()["data"][0]
        return primary, scores, app.state.request_logger.records, state

    primary, scores, records, state = run_app(clf_settings(clfs), go, setup=with_recorder)
    assert set(scores) == {primary}
    shadows = [r for r in records if r.get("arm") == "shadow"]
    answered = [r for r in records if r.get("arm") != "shadow"]
    assert len(shadows) == 8 and state["canary"]["shadow_requests"] == 8
    assert {r["id"] for r in shadows} == {r["id"] for r in answered[1:]}  # the same request ids
    assert all(r["status"] == 200 and r["input"] == TEXT for r in shadows)
    assert all(round(r["score"], 6) != primary for r in shadows)  # the challenger's answers
    assert state["primary"]["requests"] == 8 and state["canary"]["requests"] == 0


def test_failing_shadow_never_affects_the_client(clfs):
    async def go(client, app):
        assert (await start(client, clfs["v2"], mode="shadow")).status_code == 201
        challenger = app.state.engine.traffic.canaries["sent"].challenger

        def broken(texts):
            raise RuntimeError("challenger exploded")

        challenger.classify = broken
        codes = [
            (await client.post("/v1/classify", json={"model": "sent", "input": TEXT})).status_code
            for _ in range(5)
        ]
        for _ in range(200):
            if not app.state.engine.traffic._shadows:
                break
            await asyncio.sleep(0.01)
        return codes, app.state.request_logger.records

    codes, records = run_app(clf_settings(clfs), go, setup=with_recorder)
    assert codes == [200] * 5
    failed = [r for r in records if r.get("arm") == "shadow"]
    assert len(failed) == 5 and {r["status"] for r in failed} == {500}


# -- swaps under load -------------------------------------------------------------------------
async def load(client, stop: asyncio.Event, statuses: list[int], n: int = 32) -> None:
    async def one_client(i: int) -> None:
        while not stop.is_set():
            body = {"model": "sent", "input": [TEXT, f"text {i}"]}
            statuses.append((await client.post("/v1/classify", json=body)).status_code)

    await asyncio.gather(*(one_client(i) for i in range(n)))


async def under_load(client, action) -> tuple[Any, list[int]]:
    stop, statuses = asyncio.Event(), []
    traffic = asyncio.create_task(load(client, stop, statuses))
    await asyncio.sleep(0.2)
    try:
        result = await action()
        await asyncio.sleep(0.2)
    finally:
        stop.set()
        await traffic
    return result, statuses


def test_promote_and_rollback_under_concurrent_load_fail_no_request(clfs):
    async def go(client, app):
        engine = app.state.engine
        v1 = await score(client)

        async def rollout():
            first = await start(client, clfs["v2"], weight=0.5)
            await asyncio.sleep(0.2)
            old = engine.classifiers["sent"]
            promoted = await client.post("/admin/canary/sent/promote", json={})
            second = await start(client, clfs["v3"], weight=0.5)
            await asyncio.sleep(0.2)
            challenger = engine.traffic.canaries["sent"].challenger
            rolled_back = await client.delete("/admin/canary/sent")
            replies = [first, promoted, second, rolled_back]
            return [r.status_code for r in replies], first.json(), old, challenger

        (codes, first, old, challenger), statuses = await under_load(client, rollout)
        state = (await client.get("/admin/canary")).json()["data"][0]
        return codes, statuses, old, challenger, v1, await score(client), first, state

    codes, statuses, old, challenger, v1, after, first, state = run_app(clf_settings(clfs), go)
    assert codes == [201, 200, 201, 200]
    assert len(statuses) > 100 and set(statuses) == {200}, sorted(set(statuses))
    # The promoted weights answer now; the rolled-back ones never became primary.
    assert after != v1 and state["canary"] is None
    assert state["primary"]["digest"] == first["canary"]["digest"]
    # The swapped-out models were stopped once idle.
    assert not old.batcher._tasks and not challenger.batcher._tasks


def test_alias_following_swaps_weights_without_failing_requests(clfs, monkeypatch):
    """`sent=fin@champion`: when the alias moves, the server serves the new version."""
    points = {"now": ("fin/1", clfs["v1"])}
    monkeypatch.setattr(
        "honed.registry.store.resolve_ref_version",
        lambda ref, cfg=None: (points["now"][1], points["now"][0]),
    )
    monkeypatch.setattr(loading_aliases, "lookup_alias", lambda ref: points["now"])
    settings = clf_settings(clfs, models=["sent=fin@champion"], alias_poll_seconds=0.05)

    async def go(client, app):
        engine = app.state.engine
        assert engine.classifiers["sent"].version == "fin/1"
        before = await score(client)

        async def move():
            points["now"] = ("fin/2", clfs["v2"])
            for _ in range(600):
                if engine.classifiers["sent"].version == "fin/2":
                    return True
                await asyncio.sleep(0.02)
            return False

        moved, statuses = await under_load(client, move)
        state = (await client.get("/admin/canary")).json()["data"][0]
        return before, moved, statuses, await score(client), state, engine.follower.swaps

    before, moved, statuses, after, state, swaps = run_app(settings, go)
    assert moved and swaps == 1  # polled many times, swapped once
    assert set(statuses) == {200} and len(statuses) > 50
    assert before != after
    assert state["primary"]["version"] == "fin/2"


def test_alias_move_to_the_canary_version_promotes_it(clfs, monkeypatch):
    points = {"now": ("fin/1", clfs["v1"])}
    folders = {"fin@champion": clfs["v1"], "fin/2": clfs["v2"]}
    monkeypatch.setattr(
        "honed.registry.store.resolve_ref_version",
        lambda ref, cfg=None: (folders[ref], "fin/1" if "@" in ref else ref),
    )
    monkeypatch.setattr(loading_aliases, "lookup_alias", lambda ref: points["now"])
    settings = clf_settings(clfs, models=["sent=fin@champion"], alias_poll_seconds=0)

    async def go(client, app):
        engine = app.state.engine
        assert (await start(client, "fin/2", weight=0.2)).status_code == 201
        challenger = engine.traffic.canaries["sent"].challenger
        assert challenger.version == "fin/2"
        follower = loading_aliases.AliasFollower(engine, 0.05, replace_primary)
        points["now"] = ("fin/2", clfs["v2"])
        swapped = await follower.poll()
        again = await follower.poll()
        return swapped, again, engine.classifiers["sent"] is challenger, engine.traffic.canaries

    swapped, again, promoted, canaries = run_app(settings, go)
    assert swapped == ["sent"] and again == [] and promoted and canaries == {}


# -- refusals ---------------------------------------------------------------------------------
def test_bad_canary_requests_are_refused_clearly(clfs):
    async def go(client, app):
        out = {}
        out["weight"] = await start(client, clfs["v2"], weight=2)
        out["mode"] = await start(client, clfs["v2"], mode="blue-green")
        out["sticky"] = await start(client, clfs["v2"], sticky="cookie")
        out["missing"] = await start(client, "/no/such/folder")
        out["labels"] = await start(client, clfs["other"])
        out["unknown"] = await client.post(
            "/admin/canary", json={"model": "nope", "challenger": str(clfs["v2"])}
        )
        out["no_canary_promote"] = await client.post("/admin/canary/sent/promote", json={})
        out["no_canary_delete"] = await client.delete("/admin/canary/sent")
        out["method"] = await client.put("/admin/canary", json={})
        assert out["method"].headers["allow"] == "GET, POST"
        assert (await start(client, clfs["v2"])).status_code == 201
        out["twice"] = await start(client, clfs["v3"])
        return {k: (r.status_code, r.json()["error"]) for k, r in out.items()}

    got = run_app(clf_settings(clfs), go)
    assert {k: s for k, (s, _) in got.items()} == {
        "weight": 400,
        "mode": 400,
        "sticky": 400,
        "missing": 400,
        "labels": 400,
        "unknown": 404,
        "no_canary_promote": 404,
        "no_canary_delete": 404,
        "method": 405,
        "twice": 409,
    }
    assert got["weight"][1]["param"] == "weight"
    assert "labels" in got["labels"][1]["message"]
    assert "/no/such/folder" in got["missing"][1]["message"]
    assert "promote it or roll it back" in got["twice"][1]["message"]


def test_canary_routes_need_the_admin_scope(clfs):
    from honed.serve.http.auth import hash_key

    keys = [
        ApiKeyEntry(name="app", sha256=hash_key("infer-secret")),
        ApiKeyEntry(name="ops", sha256=hash_key("admin-secret"), scopes=["admin"]),
    ]

    async def go(client, app):
        infer = {"Authorization": "Bearer infer-secret"}
        admin = {"Authorization": "Bearer admin-secret"}
        return [
            (await client.get("/admin/canary")).status_code,
            (await client.get("/admin/canary", headers=infer)).status_code,
            (await client.get("/admin/canary", headers=admin)).status_code,
        ]

    assert run_app(clf_settings(clfs, api_keys=keys), go) == [401, 403, 200]


# -- generative: LoRA adapters ----------------------------------------------------------------
def test_adapter_canary_promote_and_base_refused(tiny):
    a = tiny["adapters"]

    async def answer(client, model: str) -> str:
        r = await client.post("/v1/chat/completions", json=chat_body(model))
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    async def go(client, app):
        a0, a1 = await answer(client, "a0"), await answer(client, "a1")
        base = await client.post("/admin/canary", json={"model": "base", "challenger": str(a[2])})
        r = await client.post(
            "/admin/canary", json={"model": "a0", "challenger": str(a[1]), "weight": 1.0}
        )
        assert r.status_code == 201, r.text
        on_canary = await answer(client, "a0")
        ids = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
        hidden = await client.post("/v1/chat/completions", json=chat_body("a0~canary"))
        unload = await client.delete("/v1/adapters/a0~canary")
        assert unload.status_code == 404 and (await answer(client, "a0")) == on_canary
        promoted = await client.post("/admin/canary/a0/promote", json={})
        after = await answer(client, "a0")
        return a0, a1, base, on_canary, ids, hidden.status_code, promoted.status_code, after

    base_name = Path(tiny["base"]).name
    a0, a1, base, on_canary, ids, hidden, promoted, after = run_app(
        settings_for(tiny, request_log=False, insecure_dev=True), go
    )
    assert a0 != a1 and on_canary == a1 and after == a1
    assert base.status_code in (404, 409)
    assert "a0~canary" not in ids and hidden == 404 and promoted == 200
    assert base_name in ids


def test_adapter_base_model_canary_is_refused_with_409(tiny):
    base_name = Path(tiny["base"]).name

    async def go(client, app):
        r = await client.post(
            "/admin/canary", json={"model": base_name, "challenger": str(tiny["adapters"][2])}
        )
        return r.status_code, r.json()["error"]

    status, err = run_app(settings_for(tiny, request_log=False, insecure_dev=True), go)
    assert status == 409 and err["code"] == "canary_unsupported"
    assert "base model" in err["message"]


def test_adapter_shadow_is_logged_not_returned(tiny):
    a = tiny["adapters"]

    async def go(client, app):
        first = await client.post("/v1/chat/completions", json=chat_body("a0"))
        r = await client.post(
            "/admin/canary", json={"model": "a0", "challenger": str(a[1]), "mode": "shadow"}
        )
        assert r.status_code == 201, r.text
        second = await client.post("/v1/chat/completions", json=chat_body("a0"))
        for _ in range(500):
            if not app.state.engine.traffic._shadows:
                break
            await asyncio.sleep(0.01)
        rolled_back = await client.delete("/admin/canary/a0")
        return first.json(), second.json(), app.state.request_logger.records, rolled_back

    first, second, records, rolled_back = run_app(
        settings_for(tiny, request_log=False, insecure_dev=True), go, setup=with_recorder
    )
    text = first["choices"][0]["message"]["content"]
    assert second["choices"][0]["message"]["content"] == text  # the primary answered
    shadow = [r for r in records if r.get("arm") == "shadow"]
    assert len(shadow) == 1 and shadow[0]["id"] == second["id"] and shadow[0]["status"] == 200
    assert shadow[0]["output"] != text  # a1's answer, only in the log
    assert rolled_back.status_code == 200 and rolled_back.json()["canary"] is None


def test_server_follows_a_real_registry_alias(clfs):
    """The user's path: serve `fin@champion`, promote version 2 in the registry, and the
    server answers with version 2's weights within a few polls, no restart, no failure."""
    from honed.registry.store import Registry

    registry = Registry()
    for i, folder in enumerate((clfs["v1"], clfs["v2"])):
        run_id, uri = registry.log_run("canary-test", f"v{i + 1}", folder, {}, {}, {})
        registry.register("fin", uri, run_id, {}, "champion" if i == 0 else None)
    settings = clf_settings(clfs, models=["sent=fin@champion"], alias_poll_seconds=0.2)

    async def go(client, app):
        engine = app.state.engine
        before = (await score(client), engine.classifiers["sent"].version)

        async def promote():
            await asyncio.to_thread(registry.promote, "fin", "2")
            for _ in range(300):
                if engine.classifiers["sent"].version == "fin/2":
                    return True
                await asyncio.sleep(0.05)
            return False

        moved, statuses = await under_load(client, promote)
        return before, moved, statuses, await score(client)

    (score1, version1), moved, statuses, score2 = run_app(settings, go)
    assert version1 == "fin/1" and moved and score1 != score2
    assert statuses and set(statuses) == {200}


def test_alias_follower_failures_keep_the_current_version(clfs, monkeypatch, tmp_path):
    points: dict[str, Any] = {"now": ("fin/1", clfs["v1"])}
    monkeypatch.setattr(
        "honed.registry.store.resolve_ref_version", lambda ref, cfg=None: (clfs["v1"], "fin/1")
    )

    def lookup(ref):
        if isinstance(points["now"], Exception):
            raise points["now"]
        return points["now"]

    monkeypatch.setattr(loading_aliases, "lookup_alias", lookup)
    settings = clf_settings(clfs, models=["sent=fin@champion"], alias_poll_seconds=0)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")

    async def go(client, app):
        engine = app.state.engine
        follower = loading_aliases.AliasFollower(engine, 1.0, replace_primary)
        before = await score(client)
        points["now"] = RuntimeError("registry down")
        down = await follower.poll()
        points["now"] = ("fin/2", broken)  # moved to a version that does not load
        bad = [await follower.poll(), await follower.poll()]
        return before, down, bad, follower.failures, await score(client), engine

    before, down, bad, failures, after, engine = run_app(settings, go)
    assert down == [] and bad == [[], []] and failures == 2  # the broken one is tried once
    assert before == after and engine.classifiers["sent"].version == "fin/1"


def test_adapter_state_reports_the_adapter_weights(tiny):
    from honed.serve.engine.loading import adapter_digest

    a = tiny["adapters"]

    async def go(client, app):
        r = await client.post(
            "/admin/canary", json={"model": "a0", "challenger": str(a[1]), "weight": 0.0}
        )
        assert r.status_code == 201, r.text
        return (await client.get("/admin/canary")).json()["data"]

    settings = settings_for(tiny, request_log=False, insecure_dev=True)
    data = {m["model"]: m for m in run_app(settings, go)}
    assert data["a0"]["primary"]["digest"] == adapter_digest(a[0])[:16]
    assert data["a0"]["canary"]["digest"] == adapter_digest(a[1])[:16]
    assert data["a1"]["canary"] is None and data["sent"]["kind"] == "classify"
