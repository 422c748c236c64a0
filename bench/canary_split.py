"""Canary serving: is the traffic split what was asked, and do swaps under load fail nothing?

    .venv/bin/python bench/canary_split.py [--requests 10000] [--weights 0.1,0.5]
                                           [--concurrency 32] [--cycles 3]

Two tiny random classifiers with the same labels (built in-process) serve one API id through
the real app (httpx over ASGI, no sockets): v1 as the primary, v2 as the challenger. Each
answer says which arm gave it by its score (the two models score the probe text differently),
independently of the server's own per-arm counters, which are printed beside it.

Figures, each with its target from the same run:
  * random split: share of N requests answered by the challenger vs the configured weight
    (target: within 2 points);
  * sticky split (header X-User-Id, N distinct users): share of users on the challenger vs the
    weight (target within 2 points), and users answered by both arms when they come back
    (target 0);
  * swaps under load: `--concurrency` clients classify without pause while the admin API runs
    `--cycles` x (start canary -> promote -> start canary -> roll back); failed requests
    (target 0), and p50/p99 latency during the swaps vs the same load without swaps (baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package (tiny models)

TEXT = "profits rose sharply"


def build_app(v1: Path):
    from honed.serve.http.app import create_app
    from honed.serve.settings import ServeSettings

    # insecure_dev: an in-process bench calls the admin routes without keys.
    settings = ServeSettings(
        models=[f"sent={v1}"],
        max_wait_ms=1.0,
        request_log=False,
        max_queue=4096,
        insecure_dev=True,
    )
    return create_app(settings)


async def classify(client, headers: dict[str, str] | None = None) -> tuple[int, float | None]:
    r = await client.post("/v1/classify", json={"model": "sent", "input": TEXT}, headers=headers)
    if r.status_code != 200:
        return r.status_code, None
    return 200, round(r.json()["data"][0]["score"], 6)


async def gather_limited(coros: list, limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c):
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


async def split(client, v2: Path, weight: float, n: int, conc: int, sticky: bool) -> dict:
    body = {"model": "sent", "challenger": str(v2), "weight": weight}
    if sticky:
        body["sticky"] = "header:X-User-Id"
    r = await client.post("/admin/canary", json=body)
    assert r.status_code == 201, r.text
    users = [{"X-User-Id": f"user-{i}"} if sticky else None for i in range(n)]
    answers = await gather_limited([classify(client, h) for h in users], conc)
    state = (await client.get("/admin/canary")).json()["data"][0]
    flips = 0
    if sticky:  # a second visit of 1,000 users: the same arm?
        again = await gather_limited([classify(client, h) for h in users[:1000]], conc)
        flips = sum(a[1] != b[1] for a, b in zip(answers[:1000], again, strict=True))
    r = await client.delete("/admin/canary/sent")
    assert r.status_code == 200, r.text
    return {"answers": answers, "state": state, "flips": flips}


async def load(client, stop: asyncio.Event, conc: int) -> list[tuple[int, float]]:
    out: list[tuple[int, float]] = []

    async def worker() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                status, _ = await classify(client)
            except Exception:  # a transport error is a failed request too
                status = -1
            out.append((status, time.perf_counter() - t0))

    await asyncio.gather(*(worker() for _ in range(conc)))
    return out


async def swaps(client, v2: Path, v1: Path, cycles: int) -> list[int]:
    codes = []
    for i in range(cycles):
        # Alternate which folder is the challenger so every promotion changes the weights.
        first, second = (v2, v1) if i % 2 == 0 else (v1, v2)
        for step in (
            ("POST", "/admin/canary", {"model": "sent", "challenger": str(first), "weight": 0.5}),
            ("POST", "/admin/canary/sent/promote", {}),
            ("POST", "/admin/canary", {"model": "sent", "challenger": str(second), "weight": 0.5}),
            ("DELETE", "/admin/canary/sent", None),
        ):
            codes.append((await client.request(step[0], step[1], json=step[2])).status_code)
            await asyncio.sleep(0.3)
    return codes


async def under_load(client, conc: int, action) -> tuple[Any, list[tuple[int, float]]]:
    stop = asyncio.Event()
    task = asyncio.create_task(load(client, stop, conc))
    await asyncio.sleep(0.3)
    try:
        result = await action()
    finally:
        stop.set()
        samples = await task
    return result, samples


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else 0.0


async def run(args, v1: Path, v2: Path) -> None:
    import httpx

    app = build_app(v1)
    async with app.router.lifespan_context(app):
        while not (app.state.engine is not None and app.state.engine.ready):
            await asyncio.sleep(0.05)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://b", timeout=120) as c:
            _, primary = await classify(c)
            report_splits(await splits(c, args, v2), primary, args)
            await report_swaps(c, args, v1, v2)


async def splits(client, args, v2: Path) -> list[tuple[float, bool, dict]]:
    out = []
    for weight in args.weights:
        for sticky in (False, True):
            res = await split(client, v2, weight, args.requests, args.concurrency, sticky)
            out.append((weight, sticky, res))
    return out


def report_splits(results: list, primary: float, args) -> None:
    for weight, sticky, res in results:
        answers = res["answers"]
        failed = sum(status != 200 for status, _ in answers)
        share = sum(s is not None and s != primary for _, s in answers) / len(answers)
        counted = res["state"]["canary"]["requests"] / len(answers)
        kind = "sticky (users)" if sticky else "random"
        ok = abs(share - weight) <= 0.02
        print(
            f"split {kind:14s} weight {weight:.2f}: observed {share:.4f} over {len(answers):,} "
            f"(server counter {counted:.4f}); |diff| {abs(share - weight) * 100:.2f} points "
            f"(target <= 2) {'OK' if ok else 'MISSED'}; failed {failed}"
        )
        if sticky:
            print(f"  users answered by both arms on a second visit: {res['flips']} (target 0)")


async def report_swaps(client, args, v1: Path, v2: Path) -> None:
    async def steady():
        await asyncio.sleep(args.cycles * 4 * 0.3 + 0.5)

    _, base = await under_load(client, args.concurrency, steady)
    codes, during = await under_load(
        client, args.concurrency, lambda: swaps(client, v2, v1, args.cycles)
    )
    failed = sum(status != 200 for status, _ in during)
    lat, base_lat = [t for _, t in during], [t for _, t in base]
    print(
        f"swaps under load (concurrency {args.concurrency}, {args.cycles} x start/promote/"
        f"start/rollback, admin answers {sorted(set(codes))}): {len(during):,} requests, "
        f"failed {failed} (target 0) {'OK' if failed == 0 else 'MISSED'}"
    )
    print(
        f"  latency p50 {pct(lat, 50):.1f} ms / p99 {pct(lat, 99):.1f} ms during swaps; "
        f"baseline without swaps p50 {pct(base_lat, 50):.1f} ms / p99 {pct(base_lat, 99):.1f} ms"
        f" ({len(base):,} requests)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--weights", type=lambda s: [float(w) for w in s.split(",")], default=[0.1])
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--cycles", type=int, default=3)
    args = p.parse_args()
    import torch
    from tests.fixtures.tiny_models import build_tiny_classifier

    torch.set_num_threads(1)
    logging.getLogger("honed.serve").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        v1 = build_tiny_classifier(Path(tmp) / "v1", seed=0)
        v2 = build_tiny_classifier(Path(tmp) / "v2", seed=1)
        t0 = time.perf_counter()
        asyncio.run(run(args, v1, v2))
        print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
