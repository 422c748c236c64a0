"""Per-key rate limits through `limits`: shared by replicas on Redis, per process in memory.

The two-replica tests start two server processes (honed's access layer as `honed serve`
builds it from its settings: tests/fixtures/replicas.py) sharing one Redis
(``HONED_TEST_REDIS_URL``; ``eval "$(.ci/start-redis.sh)"`` starts one on loopback; the tests
skip without it), and spread one key's requests over both: together they accept what one
server would, where two servers counting in their own memory accept twice that, which is why
`rate_limit_storage` exists. The key's window (10 requests per 50 s) is far longer than the
requests last, so each count is exact whatever the machine's speed: a stall of the client or a
replica (CI's 2 busy cores) cannot move it, as it moved a count over a 1-s window. The other
tests pin the limiter itself (the moving window over time) on memory storage.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from honed.serve.http import limits_store
from honed.serve.http.auth import hash_key
from honed.serve.http.limits_store import SharedLimiter, rate_item
from honed.serve.settings import ServeConfigError, ServeSettings

REDIS_URL = os.environ.get("HONED_TEST_REDIS_URL")
needs_redis = pytest.mark.skipif(
    not REDIS_URL, reason="HONED_TEST_REDIS_URL not set (run .ci/start-redis.sh)"
)
RATE, BURST = 0.2, 10  # -> a moving window of 10 requests per 50 s
DURATION = 2.0  # seconds of requests: well inside one window
LIMITED, PROBE = "hk-limited-key", "hk-probe-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Clock:
    """time.time() under the test's control: window arithmetic, not the machine's speed."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- the limiter (memory storage) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("rps", "burst", "amount", "window"),
    [
        (10, 20, 20, 2),  # the default burst: 20 per 2 s
        (0.01, 3, 3, 300),
        (100, 20, 100, 1),  # a window is a whole second: at least one second's worth
        (0.3, 1, 3, 10),
        (3, 20, 21, 7),  # nearest burst whose window is whole
    ],
)
def test_rate_item_keeps_the_rate_and_the_burst_as_close_as_whole_seconds_allow(
    rps, burst, amount, window
):
    item = rate_item(rps, burst)
    assert (item.amount, item.get_expiry()) == (amount, window)


@pytest.mark.parametrize("rps", [0.05, 0.7, 1, 2.5, 7, 33.3, 250, 1500])
@pytest.mark.parametrize("burst", [1, 5, 20, 100])
def test_rate_item_long_run_rate_is_the_configured_one(rps, burst):
    item = rate_item(rps, burst)
    assert item.amount / item.get_expiry() == pytest.approx(rps, rel=0.01)
    assert item.get_expiry() >= 1 and item.amount >= min(burst, rps)


def test_memory_limiter_allows_the_burst_then_429s_until_the_window_moves(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(time, "time", clock)
    limiter = SharedLimiter("memory://")
    item = rate_item(1.0, 3)  # 3 per 3 s

    async def go():
        first = [await limiter.hit(item, "rate", "app") for _ in range(4)]
        other = await limiter.hit(item, "rate", "ops")  # another key: its own budget
        clock.now += 1.5
        still = await limiter.hit(item, "rate", "app")
        clock.now += 1.6  # the first three fell out of the window
        later = [await limiter.hit(item, "rate", "app") for _ in range(4)]
        return first, other, still, later

    first, other, still, later = asyncio.run(go())
    assert [d.allowed for d in first] == [True, True, True, False]
    assert first[3].retry_after == 3 and not first[3].unavailable
    assert other.allowed
    assert not still.allowed and still.retry_after == 2  # ceil(3 - 1.5)
    assert [d.allowed for d in later] == [True, True, True, False]


def test_test_does_not_spend(monkeypatch):
    monkeypatch.setattr(time, "time", _Clock())
    limiter = SharedLimiter("memory://")
    item = rate_item(1.0, 2)

    async def go():
        tests = [await limiter.test(item, "feedback", "app") for _ in range(5)]
        hits = [await limiter.hit(item, "feedback", "app") for _ in range(3)]
        return tests, hits, await limiter.test(item, "feedback", "app")

    tests, hits, after = asyncio.run(go())
    assert all(d.allowed for d in tests)
    assert [d.allowed for d in hits] == [True, True, False]
    assert not after.allowed and after.retry_after >= 1


def test_bad_storage_uri_is_a_clear_config_error():
    with pytest.raises(ServeConfigError, match=r"rate_limit_storage 'nosuch://x'.*memory://"):
        SharedLimiter("nosuch://x")


def test_unreachable_redis_stops_the_start_and_hides_the_password():
    uri = f"redis://:s3cret@127.0.0.1:{_free_port()}/0"
    with pytest.raises(ServeConfigError, match="unreachable") as err:
        SharedLimiter(uri).check_reachable()
    assert "s3cret" not in str(err.value) and "***@127.0.0.1" in str(err.value)


def test_the_server_refuses_to_start_on_an_unreachable_storage():
    from honed.serve.http.app import create_app

    settings = ServeSettings(rate_limit_storage=f"redis://127.0.0.1:{_free_port()}/0")
    with pytest.raises(ServeConfigError, match=r"rate_limit_storage .* is unreachable"):
        create_app(settings)


def test_the_storage_setting_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("HONED_SERVE_RATE_LIMIT_STORAGE", "redis://cache:6379/2")
    monkeypatch.setenv("HONED_SERVE_RATE_LIMIT_ON_STORAGE_ERROR", "closed")
    settings = ServeSettings.load()
    assert settings.rate_limit_storage == "redis://cache:6379/2"
    assert settings.rate_limit_on_storage_error == "closed"
    with pytest.raises(ServeConfigError, match="rate_limit_on_storage_error"):
        ServeSettings.load(rate_limit_on_storage_error="maybe")


@pytest.mark.parametrize("policy", ["local", "open", "closed"])
def test_a_storage_outage_follows_the_policy_and_is_logged_once(policy, caplog, monkeypatch):
    monkeypatch.setattr(time, "time", _Clock())
    limiter = SharedLimiter(f"redis://127.0.0.1:{_free_port()}/0", on_error=policy)
    item = rate_item(1.0, 2)

    async def go():
        return [await limiter.hit(item, "rate", "app") for _ in range(3)]

    with caplog.at_level(logging.INFO, logger="honed.serve.limits"):
        decisions = asyncio.run(go())
    allowed = [d.allowed for d in decisions]
    if policy == "local":  # this replica's memory holds the key to its limit meanwhile
        assert allowed == [True, True, False] and not decisions[2].unavailable
    elif policy == "open":
        assert allowed == [True, True, True]
    else:
        assert allowed == [False] * 3 and all(d.unavailable for d in decisions)
        assert all(1 <= d.retry_after <= limits_store.RETRY_SHARED_S for d in decisions)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"rate_limit_on_storage_error={policy}" in warnings[0].message


def test_closed_policy_answers_503_with_retry_after(tmp_path):
    """Through the middleware: the shared store down and the policy closed -> 503."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from honed.serve.http.auth import AccessMiddleware, KeyStore
    from honed.serve.settings import ApiKeyEntry

    limiter = SharedLimiter(f"redis://127.0.0.1:{_free_port()}/0", on_error="closed")
    keys = KeyStore([ApiKeyEntry(name="app", sha256=hash_key(LIMITED))], 5.0, 5, limiter)
    inner = Starlette(routes=[Route("/x", lambda _r: PlainTextResponse("ok"))])
    app = AccessMiddleware(inner, keys=keys, max_body=1024, retry_after=1)

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.get("/x", headers={"Authorization": f"Bearer {LIMITED}"})

    r = asyncio.run(go())
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == "rate_limit_unavailable"


@needs_redis
def test_the_feedback_quota_is_shared_on_redis():
    """Two limiters on one Redis (two replicas): the key's hourly feedback quota is one."""
    from anyio import to_thread

    from honed.serve.http.limits_store import FeedbackQuota

    replicas = [SharedLimiter(REDIS_URL, on_error="closed") for _ in range(2)]
    key = f"team-{uuid.uuid4().hex[:8]}"

    def post(i: int) -> bool:  # as the feedback route does, in a worker thread
        quota = FeedbackQuota(replicas[i % 2], key, per_hour=3)
        if not quota.check().allowed:
            return False
        quota.spend()
        return True

    async def go():
        return [await to_thread.run_sync(post, i) for i in range(5)]

    assert asyncio.run(go()) == [True, True, True, False, False]


# --- two real replicas -----------------------------------------------------------------------


def _keys_file(folder: Path, name: str) -> Path:
    path = folder / "keys.yaml"
    keys = [
        {"name": name, "sha256": hash_key(LIMITED), "scopes": ["infer"], "rate_limit_rps": RATE},
        {"name": "probe", "sha256": hash_key(PROBE), "scopes": ["infer"]},  # no limit
    ]
    path.write_text(yaml.safe_dump({"keys": keys}))
    return path


def _expected() -> int:
    """What one server lets one key through within one window: the window's amount."""
    item = rate_item(RATE, BURST)
    assert item.get_expiry() > 10 * DURATION  # the requests end well inside one window
    return item.amount


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """Two replicas on Redis and two in memory, started together (start-up is the cost)."""
    if not REDIS_URL:
        pytest.skip("HONED_TEST_REDIS_URL not set (run .ci/start-redis.sh)")
    from tests.fixtures.replicas import start_replica, stop, wait_ready

    root = tmp_path_factory.mktemp("replicas")
    name = f"team-{uuid.uuid4().hex[:8]}"  # fresh counters however often the test runs
    keys = _keys_file(root, name)
    storages = [REDIS_URL, REDIS_URL, "memory://", "memory://"]
    started = [start_replica(keys, s, root / f"home{i}", BURST) for i, s in enumerate(storages)]
    procs, urls = [p for p, _ in started], [u for _, u in started]
    try:
        asyncio.run(wait_ready(procs, urls, PROBE, timeout=120))
        yield {"redis": urls[:2], "memory": urls[2:]}
    finally:
        stop(procs)


def _spread(urls: list[str]) -> dict[int, int]:
    from tests.fixtures.replicas import spread

    return asyncio.run(spread(urls, LIMITED, DURATION))


@needs_redis
def test_two_replicas_on_redis_hold_a_key_to_its_rate(replicas):
    codes = _spread(replicas["redis"])
    assert set(codes) <= {200, 429}, codes
    assert codes.get(429, 0) > codes[200]  # the client asked for far more than the rate
    assert codes[200] == _expected(), codes  # one budget for both replicas


@needs_redis
def test_two_replicas_in_memory_let_twice_the_rate_through(replicas):
    codes = _spread(replicas["memory"])
    assert set(codes) <= {200, 429}, codes
    # Each process counts alone: two servers' worth.
    assert codes.get(429, 0) > 0 and codes[200] == 2 * _expected(), codes
