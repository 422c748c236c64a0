"""Per-key rate limits and quotas on a storage every replica shares, through `limits`.

One :class:`SharedLimiter` per server holds the storage named by the ``rate_limit_storage``
setting (any `limits` storage URI: ``memory://``, ``redis://host:6379/0``, ``rediss://...``,
``redis+sentinel://...``, ``memcached://...``) and the moving-window strategy. Both the request
rate limit (``rate_limit_rps`` / ``rate_limit_burst``, per-key ``rate_limit_rps`` overrides)
and the feedback quota (``feedback_per_key_per_hour``) count there, so N replicas behind a
HorizontalPodAutoscaler hold a key to one budget instead of N.

The moving window is exact (every hit is a timestamp; Redis keeps them in one list per key
and limit, updated by a Lua script, so concurrent replicas cannot both take the last slot).

When the shared storage fails while serving (Redis down, a timeout), ``rate_limit_on_storage_
error`` decides: ``local`` (default) counts in this replica's memory until the storage answers
again (each replica then enforces the full limit alone: at worst the limit times the replica
count, the behaviour before shared storage), ``open`` lets every request through, ``closed``
answers 503 with Retry-After. Whichever applies, the switch is logged once as a WARNING and
the recovery as INFO; the storage is retried every ``RETRY_SHARED_S`` seconds, so requests do
not each wait for a dead server's timeout.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from limits import RateLimitItem, RateLimitItemPerHour, RateLimitItemPerSecond
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import ConfigurationError, StorageError
from limits.storage import storage_from_string

from honed.serve.settings import ServeConfigError

log = logging.getLogger("honed.serve.limits")

OnError = Literal["local", "open", "closed"]
#: After a storage error, use the fallback this long before trying the storage again.
RETRY_SHARED_S = 5.0
#: Redis client timeouts (seconds): a hung server costs a request this much at most, once per
#: RETRY_SHARED_S. A `?socket_timeout=` in the URI wins.
_REDIS_OPTIONS = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
_PREFIX = "honed"
#: The rate/window search (see rate_item) accepts a window whose rate is this close to rps.
_RATE_TOLERANCE = 0.01
_MAX_WINDOW_S = 100_000


@dataclass(frozen=True)
class Decision:
    """The answer for one request: allowed, or refused for ``retry_after`` seconds
    (``unavailable``: refused because the shared storage failed and the policy is closed)."""

    allowed: bool
    retry_after: int = 0
    unavailable: bool = False


ALLOW = Decision(True)


def rate_item(rps: float, burst: int) -> RateLimitItem:
    """The moving window equivalent to a token bucket of ``rps`` tokens/s and ``burst`` size:
    N requests in any W seconds with N/W = rps (within 1%) and N as close to ``burst`` as
    whole-second windows allow. Both allow at most ``rps * T + burst`` requests in T seconds.
    E.g. 10 rps burst 20 -> 20 per 2 s; 0.01 rps burst 3 -> 3 per 300 s; 100 rps burst 20 ->
    100 per 1 s (a window is at least one second, so the burst is at least one second's worth).
    """
    # Windows up to the one holding max(2 x burst, 100) requests (at most a day and more).
    longest = min(math.ceil(max(2 * burst, 100) / rps), _MAX_WINDOW_S)
    for tolerance in (1e-9, _RATE_TOLERANCE):  # the exact rate when some window gives it
        fits = [
            (abs(n - burst), n, w)
            for w in range(1, longest + 1)
            if (n := round(rps * w)) >= 1 and abs(n / w - rps) <= tolerance * rps
        ]
        if fits:
            _, n, w = min(fits)
            return RateLimitItemPerSecond(n, w)
    whole = max(1, round(burst / rps))  # no close fit (odd rates): nearest whole window
    return RateLimitItemPerSecond(max(1, round(rps * whole)), whole)


def hourly_item(per_hour: int) -> RateLimitItem:
    return RateLimitItemPerHour(per_hour)


def redact_uri(uri: str) -> str:
    """``redis://:secret@host/0`` -> ``redis://***@host/0`` (for messages and logs)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def _storage(uri: str, asynchronous: bool):
    scheme = urlsplit(uri).scheme.removeprefix("async+")
    options: dict = {"wrap_exceptions": True}
    if scheme.startswith(("redis", "rediss", "valkey")):
        options |= {"key_prefix": _PREFIX, **_REDIS_OPTIONS}
        if asynchronous:
            options["implementation"] = "redispy"  # `redis` is what honed installs (not coredis)
    plain = uri.removeprefix("async+")
    return storage_from_string(f"async+{plain}" if asynchronous else plain, **options)


class SharedLimiter:
    """Moving-window limits on the configured storage, with the outage policy above."""

    def __init__(self, uri: str = "memory://", on_error: OnError = "local") -> None:
        self.uri = uri
        self.on_error = on_error
        try:
            self.storage = _storage(uri, asynchronous=True)
        except ConfigurationError as err:
            raise ServeConfigError(
                f"rate_limit_storage {redact_uri(uri)!r}: {err} (use memory:// or a `limits` "
                "storage URI such as redis://HOST:6379/0)"
            ) from None
        self.strategy = MovingWindowRateLimiter(self.storage)
        self.shared = not uri.removeprefix("async+").startswith("memory")
        self._local = MovingWindowRateLimiter(_storage("memory://", asynchronous=True))
        self._down_until = 0.0  # monotonic time until which the fallback answers

    @classmethod
    def from_settings(cls, settings) -> SharedLimiter:
        return cls(settings.rate_limit_storage, settings.rate_limit_on_storage_error)

    def check_reachable(self) -> None:
        """ServeConfigError when a shared storage does not answer (called at start-up, before
        the event loop runs: a synchronous ping through `limits`' own client)."""
        if not self.shared:
            return
        try:
            reachable = _storage(self.uri, asynchronous=False).check()
        except (ConfigurationError, StorageError, OSError) as err:
            reachable, why = False, str(err)
        else:
            why = "no answer to a ping"
        if not reachable:
            raise ServeConfigError(
                f"rate_limit_storage {redact_uri(self.uri)!r} is unreachable ({why}): start "
                "it, fix the URI, or use memory:// (limits then apply per replica)"
            )

    async def hit(self, item: RateLimitItem, *ids: str) -> Decision:
        """Take one request from ``item``'s budget for ``ids``."""
        return await self._ask(item, ids, take=True)

    async def test(self, item: RateLimitItem, *ids: str) -> Decision:
        """Whether one more request would pass, without taking it."""
        return await self._ask(item, ids, take=False)

    async def _ask(self, item: RateLimitItem, ids: tuple[str, ...], take: bool) -> Decision:
        if time.monotonic() >= self._down_until:
            try:
                decision = await _decide(self.strategy, item, ids, take)
            except StorageError as err:
                self._failed(err)
            else:
                self._recovered()
                return decision
        if self.on_error == "open":
            return ALLOW
        if self.on_error == "closed":
            return Decision(False, max(1, math.ceil(self._down_until - time.monotonic())), True)
        return await _decide(self._local, item, ids, take)

    def _failed(self, err: Exception) -> None:
        if self._down_until == 0.0:
            policy = {
                "local": "counting in this replica's memory (limits are per replica meanwhile)",
                "open": "letting requests through unlimited",
                "closed": "refusing rate-limited requests with 503",
            }[self.on_error]
            log.warning(
                "rate-limit storage %s failed (%s): %s until it answers "
                "(rate_limit_on_storage_error=%s)",
                redact_uri(self.uri),
                err,
                policy,
                self.on_error,
            )
        self._down_until = time.monotonic() + RETRY_SHARED_S

    def _recovered(self) -> None:
        if self._down_until != 0.0:
            log.info("rate-limit storage %s answers again: limits shared", redact_uri(self.uri))
            self._down_until = 0.0


async def _decide(
    strategy: MovingWindowRateLimiter, item: RateLimitItem, ids: tuple[str, ...], take: bool
) -> Decision:
    passed = await (strategy.hit if take else strategy.test)(item, *ids)
    if passed:
        return ALLOW
    stats = await strategy.get_window_stats(item, *ids)
    return Decision(False, max(1, math.ceil(stats.reset_time - time.time())))


class FeedbackQuota:
    """``feedback_per_key_per_hour`` for one key, for the feedback route (a plain def that
    FastAPI runs in a worker thread: the calls hop to the event loop that owns the storage).
    ``check`` before storing; ``spend`` once stored (a post replacing the key's earlier
    feedback on the same item spends nothing: a changed mind, not another vote)."""

    def __init__(self, limiter: SharedLimiter, key_name: str, per_hour: int) -> None:
        self.limiter = limiter
        self.key_name = key_name
        self.per_hour = per_hour
        self.item = hourly_item(per_hour)

    def check(self) -> Decision:
        return self._run(self.limiter.test)

    def spend(self) -> Decision:
        return self._run(self.limiter.hit)

    def _run(self, fn) -> Decision:
        from anyio.from_thread import run

        return run(fn, self.item, "feedback", self.key_name)
