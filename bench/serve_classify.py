"""/v1/classify throughput at concurrency 32 vs a DIY FastAPI endpoint calling a transformers
pipeline one request at a time (same model, same machine, same run). Loopback only.

    .venv/bin/python bench/serve_classify.py [--model FOLDER] [--requests 800]

Default model: the packaged all-MiniLM-L6-v2 with a fresh 3-label classification head.
Both servers run as subprocesses with the same torch thread count.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

TEXTS = [
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period.",
    "The company said it expects net sales to decrease in 2009.",
    "Finnish Talentum reports its operating profit increased to EUR 20.5 mn.",
    "The contract value amounts to about EUR 11 million, the company said.",
    "Shares fell sharply after the profit warning.",
    "The board will propose a dividend of EUR 0.50 per share.",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_model(out: Path) -> Path:
    """MiniLM with a fresh (random) 3-label head, saved as a classification folder."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from honed.models.packaged import packaged_path

    torch.manual_seed(0)
    src = packaged_path("all-minilm-l6-v2")
    labels = ["negative", "neutral", "positive"]
    model = AutoModelForSequenceClassification.from_pretrained(
        str(src),
        num_labels=3,
        id2label=dict(enumerate(labels)),
        label2id={x: i for i, x in enumerate(labels)},
    )
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(out)
    return out


DIY_APP = """
import sys, torch
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline
torch.set_num_threads(int(sys.argv[2]))
pipe = pipeline("text-classification", model=sys.argv[1], top_k=None, device="cpu")
app = FastAPI()

class Body(BaseModel):
    model: str
    input: str

@app.post("/v1/classify")
def classify(body: Body):
    # The guide's DIY option: one pipeline call per request, no batching across requests.
    scores = pipe(body.input)
    scores = scores[0] if scores and isinstance(scores[0], list) else scores
    best = max(scores, key=lambda s: s["score"])
    return {"label": best["label"], "score": best["score"]}

@app.get("/healthz")
def healthz():
    return {"status": "ok"}
"""


def start(
    kind: str, model: Path, threads: int, workdir: Path, workers: int = 1
) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    if kind.startswith("honed"):
        honed = str(Path(sys.executable).parent / "honed")
        entry = f"base={model}" if kind == "honed-gen" else f"clf={model}"
        cmd = [
            honed,
            "serve",
            entry,
            "--port",
            str(port),
            "--max-batch-size",
            "32",
            "--max-wait-ms",
            "3",
            "--log-level",
            "warning",
            "--classify-workers",
            str(workers),
        ]
        env["HONED_SERVE_TORCH_THREADS"] = str(threads)
        ready = "/readyz"
    else:
        app = workdir / "diy_app.py"
        app.write_text(DIY_APP)
        cmd = [
            sys.executable,
            "-c",
            f"import sys, uvicorn; sys.argv=['x', {str(model)!r}, '{threads}']; "
            f"sys.path.insert(0, {str(workdir)!r}); import diy_app; "
            f"uvicorn.run(diy_app.app, host='127.0.0.1', port={port}, log_level='warning')",
        ]
        ready = "/healthz"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 180
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"{kind} server died: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + ready).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"{kind} server did not start")


async def drive(url: str, n: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    it = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            for i in it:
                t = time.perf_counter()
                r = await client.post(
                    "/v1/classify", json={"model": "clf", "input": TEXTS[i % len(TEXTS)]}
                )
                latencies.append(time.perf_counter() - t)
                errors += r.status_code != 200

        for _ in range(2):  # warm-up round, then the measured one
            latencies.clear()
            it = iter(range(n))
            start_t = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - start_t
    q = statistics.quantiles(latencies, n=100)
    return {"rps": n / elapsed, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "errors": errors}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="classification folder (default: MiniLM + head)")
    p.add_argument("--requests", type=int, default=800)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads per server")
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="honed classifier batch threads (the DIY server runs requests on FastAPI's "
        "thread pool, so both use every core)",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model or default_model(work / "minilm-clf")
        results = {}
        for kind in ("diy", "honed"):  # one server at a time: they never share the CPUs
            proc, url = start(kind, model, args.threads, work, args.workers)
            try:
                results[kind] = asyncio.run(drive(url, args.requests, args.concurrency))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    for kind, r in results.items():
        print(
            f"{kind:6s} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
            f"p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}"
        )
    ratio = results["honed"]["rps"] / results["diy"]["rps"]
    print(
        f"throughput ratio honed/DIY at concurrency {args.concurrency}: {ratio:.2f}x (target >= 5x)"
    )


if __name__ == "__main__":
    main()
