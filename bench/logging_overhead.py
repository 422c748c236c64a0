"""Server throughput with the request log on vs off (target: on >= 0.95x off).

    .venv/bin/python bench/logging_overhead.py [--model FOLDER] [--requests 1500] [--rounds 6]

The same `honed serve` app (``create_app``) runs as a subprocess on loopback, once with the
request log on (``request_log_url`` = a SQLite file; PII redaction on, as by default) and once
with ``request_log: false``, ``--rounds`` times (which one goes first alternates), so both see
the same machine load; /v1/classify is driven at concurrency 32 by the aiohttp load
generator of serve_classify.py (warm-up round, then the measured one).
Default model: a tiny random BERT classifier (2 layers, hidden 32). Its forward pass is almost
free, so logging is as large a share of each request as it gets: a worst case.
After the "on" rounds the log must hold one row per request.
Figures: wall-clock requests/s per round, the on/off ratio of each round's adjacent pair and
their median and geometric mean (this VM's speed drifts by up to 25% between rounds, so only
adjacent runs compare well); the server process's CPU time per request; and the CPU time of
the log writer thread itself (``/proc/PID/task/TID/stat``), the logger's cost on the server
measured without any noise from the rest of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package (tiny models)
from serve_classify import _free_port, drive, launch

TEXTS = [
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period.",
    "The company said it expects net sales to decrease in 2009.",
    "Shares fell sharply after the profit warning.",
    "The board will propose a dividend of EUR 0.50 per share.",
]

LAUNCH = """
import sys, uvicorn
from honed.serve.http.app import create_app
from honed.serve.settings import ServeSettings
model, port, db = sys.argv[1], int(sys.argv[2]), sys.argv[3]
# The product's own switch: request_log on (the default, with PII redaction) or off.
log = {"request_log": False} if db == "-" else {"request_log_url": f"sqlite:///{db}"}
app = create_app(ServeSettings(models=[f"clf={model}"], torch_threads=1, max_batch_size=32,
                               max_wait_ms=3, **log))
if app.state.request_logger is not None:  # the writer thread's id, for its CPU time
    open(db + ".tid", "w").write(str(app.state.request_logger._thread.native_id))
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


def start(model: Path, db: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", LAUNCH, str(model), str(port), db]
    return launch(cmd, env, port, "/readyz", "logging " + ("off" if db == "-" else "on"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def writer_thread(pid: int, db: str) -> Path | None:
    """/proc entry of the server's request-log writer thread (its native id is written by
    the launch script), or None when logging is off."""
    tid = Path(db + ".tid")
    return Path(f"/proc/{pid}/task/{tid.read_text()}") if tid.exists() else None


def thread_cpu_seconds(task: Path | None) -> float:
    """CPU time of one thread in ns resolution (schedstat; stat's ticks are 10 ms)."""
    if task is None:
        return 0.0
    return int((task / "schedstat").read_text().split()[0]) / 1e9


def drive_measured(url: str, n: int, concurrency: int, pid: int, db: str) -> dict[str, float]:
    """Over the measured ``n`` requests (after a warm-up round of the same size): requests/s,
    server CPU ms per request, log-writer-thread CPU us per request, errors."""
    writer = writer_thread(pid, db)
    marks: list[tuple[float, float]] = []

    def mark() -> None:
        marks.append((cpu_seconds(pid), thread_cpu_seconds(writer)))

    r = asyncio.run(drive(url, n, concurrency, TEXTS, before_measured=mark))
    mark()
    (cpu0, w0), (cpu1, w1) = marks
    return {
        "rps": r["rps"],
        "cpu_ms": (cpu1 - cpu0) * 1000 / n,
        "writer_us": (w1 - w0) * 1e6 / n,
        "errors": int(r["errors"]),
    }


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


def run_rounds(model: Path, db: Path, args: argparse.Namespace) -> list[dict[str, dict]]:
    """Per round: {"off": result, "on": result} (results of drive_measured)."""
    rounds: list[dict[str, dict]] = []
    for round_ in range(args.rounds):
        pair: dict[str, dict] = {}
        # Alternate which mode goes first: with a fixed order, a server that starts right
        # after another one's shutdown measured up to 10% slower (an A/A check showed it).
        for mode in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
            target = str(db) if mode == "on" else "-"
            proc, url = start(model, target)
            try:
                pair[mode] = r = drive_measured(
                    url, args.requests, args.concurrency, proc.pid, target
                )
            finally:
                proc.terminate()  # SIGTERM: lifespan shutdown closes (flushes) the logger
                proc.wait(timeout=60)
            print(
                f"round {round_ + 1} logging {mode:3s}: {r['rps']:7.1f} req/s  "
                f"{r['cpu_ms']:6.2f} server CPU ms/request  "
                f"writer thread {r['writer_us']:5.1f} us/request  errors {r['errors']}"
            )
        rounds.append(pair)
    return rounds


def summarise(rounds: list[dict[str, dict]], per_record_ms: float) -> None:
    ratios = [r["on"]["rps"] / r["off"]["rps"] for r in rounds]
    geo = math.exp(statistics.fmean(math.log(x) for x in ratios))
    print("paired on/off throughput ratios: " + " ".join(f"{x:.3f}" for x in ratios))
    print(
        f"throughput logging on / off: median of pairs {statistics.median(ratios):.3f}x, "
        f"geometric mean {geo:.3f}x (target >= 0.95x)"
    )
    c_off = statistics.median(r["off"]["cpu_ms"] for r in rounds)
    c_on = statistics.median(r["on"]["cpu_ms"] for r in rounds)
    print(f"server CPU per request on / off: {c_on:.2f} / {c_off:.2f} ms -> {c_off / c_on:.3f}x")
    writer = statistics.median(r["on"]["writer_us"] for r in rounds)
    print(
        f"log writer thread CPU: {writer:.1f} us/request = {writer / 1000 / c_off:.2%} of a "
        f"request's server CPU -> CPU-bound ratio {c_off / (c_off + writer / 1000):.3f}x"
    )
    print(
        f"request logger CPU per record (in-process, submit + write, 50-row batches): "
        f"{per_record_ms * 1000:.0f} us -> CPU-bound ratio "
        f"{c_off / (c_off + per_record_ms):.3f}x"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="classification folder (default: tiny BERT)")
    p.add_argument("--requests", type=int, default=1500)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.model is None:
            from tests.fixtures.tiny_models import build_tiny_classifier

            args.model = build_tiny_classifier(work / "tiny-clf")
        db = work / "requests.db"
        rounds = run_rounds(args.model, db, args)
        logged = rows_in(db)
        per_record = logger_cpu_ms(work / "micro.db")
    expected = args.rounds * 2 * args.requests  # warm-up + measured round each
    print(f"rows in the request log: {logged} (requests sent with logging on: {expected})")
    summarise(rounds, per_record)


if __name__ == "__main__":
    main()
