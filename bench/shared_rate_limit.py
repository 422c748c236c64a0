"""Two server replicas, one key: accepted requests/s vs the configured rate, with the key's
limit counted in Redis (shared) and in each process's memory (the default).

    .venv/bin/python bench/shared_rate_limit.py [--rate 10] [--burst 10] [--seconds 20]
        [--redis redis://127.0.0.1:6379/0] [--full]

Each replica is honed's access layer (API keys + rate limits, built by `KeyStore.from_settings`
from `HONED_SERVE_*` exactly as `honed serve` builds it) in front of a constant answer, under
uvicorn (tests/fixtures/replicas.py); `--full` runs `honed serve` on a tiny random classifier
instead (GET /v1/models; minutes to start on a loaded machine). A client spreads the key's
requests evenly over both replicas (3 connections each, as fast as they answer) for
`--seconds`; the figure is accepted (200) requests per second against the configured rate,
and the ratio. One server would accept `rate * seconds + burst`: the ratio to that is printed
too. Also: the limiter's own cost per request, in process (memory vs Redis, 2,000 hits),
next to a plain Redis PING round trip (the floor for any shared store on this machine).
Without `--redis` (or HONED_TEST_REDIS_URL) a redis-server is started on a free port and
stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package
from tests.fixtures.replicas import free_port, spread, start_replica, stop, wait_ready

from honed.serve.http.auth import hash_key
from honed.serve.http.limits_store import SharedLimiter, rate_item

LIMITED, PROBE = "hk-bench-limited", "hk-bench-probe"


def _own_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    if shutil.which("redis-server") is None:
        sys.exit("no redis-server: pass --redis URL or install it (.ci/start-redis.sh)")
    port = free_port()
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(folder)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, f"redis://127.0.0.1:{port}/0"


def _keys_file(folder: Path, rate: float) -> Path:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    keys = [
        {"name": name, "sha256": hash_key(LIMITED), "scopes": ["infer"], "rate_limit_rps": rate},
        {"name": "probe", "sha256": hash_key(PROBE), "scopes": ["infer"]},
    ]
    path = folder / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": keys}))
    return path


def _measure(urls: list[str], seconds: float) -> tuple[dict[int, int], float]:
    start = time.monotonic()
    codes = asyncio.run(spread(urls, LIMITED, seconds))
    return codes, time.monotonic() - start


async def _hit_cost(uri: str, n: int = 2000) -> float:
    """Microseconds per limiter hit in this process (an unlimited-enough item)."""
    limiter = SharedLimiter(uri)
    item = rate_item(1e6, 1000)
    key = uuid.uuid4().hex
    start = time.perf_counter()
    for _ in range(n):
        await limiter.hit(item, "bench", key)
    return (time.perf_counter() - start) / n * 1e6


async def _ping(uri: str, n: int = 500) -> float:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(uri)
    await client.ping()
    start = time.perf_counter()
    for _ in range(n):
        await client.ping()
    await client.aclose()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=10.0, help="the key's rate_limit_rps")
    ap.add_argument("--burst", type=int, default=10, help="rate_limit_burst")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--redis", default=os.environ.get("HONED_TEST_REDIS_URL"))
    ap.add_argument("--full", action="store_true", help="`honed serve` on a tiny classifier")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="shared-rl-"))
    redis_proc = None
    redis_url = args.redis
    if redis_url is None:
        redis_proc, redis_url = _own_redis(root)
    model = None
    if args.full:
        from tests.fixtures.tiny_models import build_tiny_classifier

        model = build_tiny_classifier(root / "clf")
    item = rate_item(args.rate, args.burst)
    one_server = args.rate * args.seconds + item.amount
    print(f"key limit: {args.rate:g} rps, burst {args.burst} -> {item} (moving window)")
    print(f"one server would accept at most ~{one_server:.0f} in {args.seconds:g} s")
    try:
        for storage in (redis_url, "memory://"):
            keys = _keys_file(root, args.rate)
            started = [
                start_replica(keys, storage, root / f"h{i}", args.burst, model) for i in range(2)
            ]
            procs, urls = [p for p, _ in started], [u for _, u in started]
            try:
                asyncio.run(wait_ready(procs, urls, PROBE))
                codes, wall = _measure(urls, args.seconds)
            finally:
                stop(procs)
            ok = codes.get(200, 0)
            label = "redis (shared)" if storage != "memory://" else "memory (per process)"
            print(
                f"{label:22s} sent {sum(codes.values()):6d}  accepted {ok:5d} = "
                f"{ok / wall:6.2f}/s vs {args.rate:g}/s configured: x{ok / wall / args.rate:.2f}"
                f"; vs one server's {one_server:.0f}: x{ok / one_server:.2f}  {codes}"
            )
        for uri in ("memory://", redis_url):
            cost = asyncio.run(_hit_cost(uri))
            print(f"limiter cost per request, {uri.split(':')[0]:6s}: {cost:7.1f} us")
        print(
            f"redis PING round trip (this machine's floor): {asyncio.run(_ping(redis_url)):.1f} us"
        )
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
