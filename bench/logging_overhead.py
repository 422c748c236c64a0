"""Server throughput with the request log on vs off (target: on >= 0.95x off).

    .venv/bin/python bench/logging_overhead.py [--model FOLDER] [--requests 600] [--rounds 2]

The same `honed serve` app (``create_app``) runs as a subprocess on loopback, once with the
request log on (``request_log_url`` = a SQLite file; PII redaction on, as by default) and once
with ``request_log: false``, ``--rounds`` times (which one goes first alternates), so both see
the same machine load; /v1/classify is driven at concurrency 32 by the aiohttp load
generator of serve_classify.py (warm-up round, then the measured one).
Default model: a tiny random BERT classifier (2 layers, hidden 32). Its forward pass is almost
free, so logging is as large a share of each request as it gets: a worst case.
After the "on" rounds the log must hold one row per request.
Two figures: wall-clock requests/s (median over rounds; noisy when other jobs share the
CPUs) and the server process's CPU time per request (from /proc; robust to that noise), whose
off/on ratio is the throughput ratio of a CPU-bound server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from serve_classify import _free_port, drive

TEXTS = [
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period.",
    "The company said it expects net sales to decrease in 2009.",
    "Shares fell sharply after the profit warning.",
    "The board will propose a dividend of EUR 0.50 per share.",
]

LAUNCH = """
import sys, uvicorn
from honed.serve.app import create_app
from honed.serve.settings import ServeSettings
model, port, db = sys.argv[1], int(sys.argv[2]), sys.argv[3]
# The product's own switch: request_log on (the default, with PII redaction) or off.
log = {"request_log": False} if db == "-" else {"request_log_url": f"sqlite:///{db}"}
app = create_app(ServeSettings(models=[f"clf={model}"], torch_threads=1, max_batch_size=32,
                               max_wait_ms=3, **log))
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


def start(model: Path, db: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", LAUNCH, str(model), str(port), db]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 180
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server died: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive_measured(url: str, n: int, concurrency: int, pid: int) -> tuple[float, float, int]:
    """Requests per second and server CPU ms per request over the measured ``n`` requests
    (after a warm-up round of the same size), and errors."""
    cpu0: list[float] = []
    r = asyncio.run(
        drive(url, n, concurrency, TEXTS, before_measured=lambda: cpu0.append(cpu_seconds(pid)))
    )
    return r["rps"], (cpu_seconds(pid) - cpu0[0]) * 1000 / n, int(r["errors"])


def logger_cpu_ms(db: Path, n: int = 5000) -> float:
    """CPU ms per record of RequestLogger (submit on the caller's thread + batch writes on
    its own), in this process, with 50-record batches as at ~100 req/s."""
    from honed.monitor.quality import redact_pii
    from honed.monitor.requestlog import RequestLogger

    # With the server's default PII redaction of input and output texts.
    logger = RequestLogger(f"sqlite:///{db}", queue_size=n + 1, batch_size=50, redact=redact_pii)
    record = {
        "model": "clf",
        "route": "/v1/classify",
        "latency_ms": 3.2,
        "status": 200,
        "prompt_tokens": 12,
        "input": TEXTS[0],
        "output": "positive",
        "label": "positive",
        "score": 0.9,
    }
    start = time.process_time()
    for i in range(n):
        logger.submit({**record, "id": f"m{i}"})
    logger.close()
    return (time.process_time() - start) * 1000 / n


def rows_in(db: Path) -> int:
    from honed.monitor.requestlog import RequestStore

    store = RequestStore(f"sqlite:///{db}")
    n = len(store.fetch(columns=["pk"]))
    store.engine.dispose()
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="classification folder (default: tiny BERT)")
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.model is None:
            from honed.serve.tiny import build_tiny_classifier

            args.model = build_tiny_classifier(work / "tiny-clf")
        rps: dict[str, list[float]] = {"off": [], "on": []}
        cpu: dict[str, list[float]] = {"off": [], "on": []}
        db = work / "requests.db"
        for round_ in range(args.rounds):
            # Alternate which mode goes first: with a fixed order, a server that starts right
            # after another one's shutdown measured up to 10% slower (an A/A check showed it).
            for mode in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
                proc, url = start(args.model, str(db) if mode == "on" else "-")
                try:
                    value, cpu_ms, errors = drive_measured(
                        url, args.requests, args.concurrency, proc.pid
                    )
                finally:
                    proc.terminate()  # SIGTERM: lifespan shutdown closes (flushes) the logger
                    proc.wait(timeout=60)
                rps[mode].append(value)
                cpu[mode].append(cpu_ms)
                print(
                    f"logging {mode:3s}: {value:7.1f} req/s  {cpu_ms:6.2f} server CPU ms/request"
                    f"  errors {errors}"
                )
        logged = rows_in(db)
        per_record = logger_cpu_ms(work / "micro.db")
    off, on = statistics.median(rps["off"]), statistics.median(rps["on"])
    expected = args.rounds * 2 * args.requests  # warm-up + measured round each
    print(f"rows in the request log: {logged} (requests sent with logging on: {expected})")
    print(
        f"throughput logging on / off: {on:.1f} / {off:.1f} req/s = {on / off:.3f}x "
        "(wall clock: noisy on a shared machine)"
    )
    c_off, c_on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    print(
        f"server CPU per request on / off: {c_on:.2f} / {c_off:.2f} ms -> {c_off / c_on:.3f}x "
        "(also noisy: contention inflates CPU time)"
    )
    print(
        f"request logger CPU per record (in-process, 50-row batches): {per_record * 1000:.0f} us "
        f"-> CPU-bound throughput ratio {c_off / (c_off + per_record):.3f}x (target >= 0.95x)"
    )


if __name__ == "__main__":
    main()
