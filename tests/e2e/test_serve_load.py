"""Bounded load on loopback: >= 5,000 requests at concurrency 64 against `honed serve`.

Checks: no 5xx; every refused request is a 429/503 with Retry-After; server RSS flat after
warm-up (growth under 10 % + 30 MiB). Marked slow (about a minute on 2 CPU cores):
    .venv/bin/pytest tests/e2e/test_serve_load.py -m slow -s
"""

from __future__ import annotations

import asyncio
import collections
import random
import time

import httpx
import pytest
from tests.e2e.test_serve_openai import serve_process, tiny_models

TOTAL, CONCURRENCY, WARMUP = 5000, 64, 500


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))


def _request(i: int) -> tuple[str, dict]:
    kind = i % 10
    if kind < 6:
        return "/v1/classify", {"model": "sent", "input": ["profits rose", "losses widened"]}
    model = random.choice(["base", "a0", "a1"])
    return "/v1/chat/completions", {
        "model": model,
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 4,
        "temperature": 0,
        "stream": kind == 9,
    }


async def _drive(url: str, pid: int) -> dict:
    codes: collections.Counter = collections.Counter()
    bad: list[str] = []
    rss: dict[str, int] = {}
    counter = iter(range(TOTAL))
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            for i in counter:
                if i == WARMUP:
                    rss["warm"] = _rss_kib(pid)
                path, body = _request(i)
                try:
                    r = await client.post(path, json=body)
                except httpx.TransportError as err:
                    codes["transport-error"] += 1
                    bad.append(f"request {i}: {type(err).__name__} {err}")
                    continue
                codes[r.status_code] += 1
                if r.status_code >= 500 and r.status_code != 503:
                    bad.append(f"{r.status_code} {r.text[:200]}")
                if r.status_code in (429, 503) and "retry-after" not in r.headers:
                    bad.append(f"{r.status_code} without Retry-After")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - start
    rss["end"] = _rss_kib(pid)
    return {"codes": codes, "bad": bad, "rss": rss, "elapsed": elapsed}


@pytest.mark.slow
def test_load_5000_requests_concurrency_64(tmp_path):
    m = tiny_models(tmp_path)
    args = [
        str(m["base"]),
        f"a0={m['adapters'][0]}",
        f"a1={m['adapters'][1]}",
        f"sent={m['clf']}",
        "--max-queue",
        "16",
        "--max-batch-size",
        "32",
    ]
    log = tmp_path / "server.log"
    with serve_process(args, log=log) as (url, proc):
        out = asyncio.run(_drive(url, proc.pid))
        alive = proc.poll() is None
    if out["bad"] or not alive:
        print(log.read_text()[-4000:])
    codes, rss = out["codes"], out["rss"]
    print(
        f"\n{TOTAL} requests, concurrency {CONCURRENCY}: {dict(codes)} in "
        f"{out['elapsed']:.1f}s ({TOTAL / out['elapsed']:.0f} req/s); RSS after warm-up "
        f"{rss['warm'] / 1024:.0f} MiB -> end {rss['end'] / 1024:.0f} MiB"
    )
    assert alive, "server died"
    assert sum(codes.values()) == TOTAL
    assert not out["bad"], out["bad"][:5]
    assert set(codes) <= {200, 429, 503}
    assert codes[200] > TOTAL // 2
    assert rss["end"] <= rss["warm"] * 1.10 + 30 * 1024
