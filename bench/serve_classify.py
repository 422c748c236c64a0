"""/v1/classify throughput at concurrency 32 vs a DIY FastAPI endpoint calling a transformers
pipeline one request at a time (same model, same machine, same run). Loopback only.

    .venv/bin/python bench/serve_classify.py [--model FOLDER] [--requests 800] [--rounds 3]

Default model: the packaged all-MiniLM-L6-v2 with a fresh 3-label classification head; pass
`--model runs/financial-sentiment` after `make demo` for the trained specialist. Requests carry
Financial PhraseBank sentences (real length spread, so padding costs what it costs in use).
All servers run as subprocesses, one at a time. Two DIY servers: `diy-serial` answers one
request at a time (the issue's wording; torch on every core), `diy-pool` runs requests on
FastAPI's thread pool (the strongest DIY set-up; one torch thread each). honed runs
six ways, all with packed (padding-free) passes unless named `-padded`: float32 weights
(exactly the evaluated model), `--dtype bfloat16`, `--classify-quantization int8` with batch
threads, int8 with `--classify-processes` (worker processes), the same with
`--no-classify-packing`, which shows what packing adds in the same round, and the same with
`HONED_ENCODER_KERNELS=off` (`-torch`: torch's int8 Linear and attention instead of honed's
kernels, honed.models.cpu_encoder, which int8 uses on CPUs without VNNI). After the rounds,
each way's label agreement with float32 padded passes over every PhraseBank sentence
(through the server's loader and engine; honed's kernels where they run, and torch's int8
Linear as "int8 packed, torch"). Every server runs once per round; ratios are taken
within a round and the median over rounds is reported (the VM's speed drifts between rounds).
The load generator is aiohttp (0.2 ms CPU per request, against 1.6 ms for httpx): it shares
the two cores with the server under test, so a heavy client would cap the faster server more
than the slower one.
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
from collections.abc import Callable
from pathlib import Path

import aiohttp
import httpx

PHRASEBANK = Path(__file__).parent.parent / "data/financial_phrasebank/Sentences_AllAgree.txt"


def sentences() -> list[str]:
    """PhraseBank lines are `sentence@label` in ISO-8859-1."""
    lines = PHRASEBANK.read_text(encoding="iso-8859-1").splitlines()
    return [line.rsplit("@", 1)[0] for line in lines if "@" in line]


TEXTS = sentences()
DIY = ("diy-serial", "diy-pool")
KINDS = (
    *DIY,
    "honed",
    "honed-bf16",
    "honed-int8",
    "honed-int8-procs",
    "honed-int8-procs-padded",
    "honed-int8-procs-torch",
)


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


# The guide's DIY option, two ways. "serial": an `async def` endpoint calling the pipeline, so
# the event loop runs one request at a time (the wording), torch on every core (its
# default). "pool": a plain `def` endpoint, which FastAPI runs on its thread pool, up to 40
# pipeline calls at once, one torch thread each: the strongest DIY set-up we found.
DIY_APP = """
import sys, torch
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline
torch.set_num_threads(int(sys.argv[2]))
# A mean-pooled honed run folder carries its head as code (config.json auto_map): a stock
# pipeline refuses it without trust_remote_code, and the DIY user passes it, as the error says.
pipe = pipeline(
    "text-classification", model=sys.argv[1], top_k=None, device="cpu", trust_remote_code=True
)
app = FastAPI()

class Body(BaseModel):
    model: str
    input: str

def classify(body: Body):
    # One pipeline call per request, no batching across requests.
    scores = pipe(body.input)
    scores = scores[0] if scores and isinstance(scores[0], list) else scores
    best = max(scores, key=lambda s: s["score"])
    return {"label": best["label"], "score": best["score"]}

if sys.argv[3] == "serial":
    @app.post("/v1/classify")
    async def classify_serial(body: Body):
        return classify(body)
else:
    app.post("/v1/classify")(classify)

@app.get("/healthz")
def healthz():
    return {"status": "ok"}
"""


def start(
    kind: str,
    model: Path,
    threads: int,
    workdir: Path,
    workers: int = 1,
    batching: tuple[int, float] = (32, 3.0),
) -> tuple[subprocess.Popen, str]:
    """Start one server; `batching` is honed's (max_batch_size, max_wait_ms)."""
    port = _free_port()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    if kind.startswith("honed"):
        honed = str(Path(sys.executable).parent / "honed")
        entry = f"base={model}" if kind.startswith("honed-gen") else f"clf={model}"
        dtype = "bfloat16" if kind == "honed-bf16" else "float32"
        quantization = "int8" if kind.startswith("honed-int8") else "none"
        # -procs: batches in `workers` processes instead of threads
        processes = workers if "-procs" in kind else 0
        cmd = [
            honed,
            "serve",
            entry,
            "--port",
            str(port),
            "--max-batch-size",
            str(batching[0]),
            "--max-wait-ms",
            str(batching[1]),
            "--log-level",
            "warning",
            "--classify-workers",
            str(workers),
            "--dtype",
            dtype,
            "--classify-quantization",
            quantization,
            "--classify-processes",
            str(processes),
        ]
        if kind.endswith("-padded"):  # every other honed kind packs (the default on CPU)
            cmd.append("--no-classify-packing")
        if kind.endswith("-static"):  # serve_generate: no continuous batching
            cmd.append("--no-continuous-batching")
        if kind.endswith("-eager"):  # serve_generate: no fused lone-request step
            cmd += ["--decode", "eager"]
        if kind.endswith("-torch"):  # torch's int8 Linear and attention, not honed's kernels
            env["HONED_ENCODER_KERNELS"] = "off"
        env["HONED_SERVE_TORCH_THREADS"] = str(threads)
        ready = "/readyz"
    else:
        app = workdir / "diy_app.py"
        app.write_text(DIY_APP)
        mode = kind.removeprefix("diy-")
        diy_threads = (os.cpu_count() or 1) if mode == "serial" else threads
        cmd = [
            sys.executable,
            "-c",
            f"import sys, uvicorn; sys.argv=['x', {str(model)!r}, '{diy_threads}', '{mode}']; "
            f"sys.path.insert(0, {str(workdir)!r}); import diy_app; "
            f"uvicorn.run(diy_app.app, host='127.0.0.1', port={port}, log_level='warning')",
        ]
        ready = "/healthz"
    return launch(cmd, env, port, ready, kind)


def launch(
    cmd: list[str], env: dict[str, str], port: int, ready: str, kind: str
) -> tuple[subprocess.Popen, str]:
    """Start a server subprocess and wait until GET `ready` answers 200 (3 minutes at most)."""
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


async def drive(
    url: str,
    n: int,
    concurrency: int,
    texts: list[str] | None = None,
    before_measured: Callable[[], None] | None = None,
) -> dict[str, float]:
    """POST /v1/classify `n` times at `concurrency` twice (warm-up, then measured); requests/s,
    p50/p99 latency and errors of the measured round. `before_measured` runs between them."""
    texts = texts or TEXTS
    latencies: list[float] = []
    errors = 0
    it = iter(range(n))
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as client:

        async def worker() -> None:
            nonlocal errors
            for i in it:
                t = time.perf_counter()
                body = {"model": "clf", "input": texts[i % len(texts)]}
                async with client.post("/v1/classify", json=body) as r:
                    await r.read()
                    errors += r.status != 200
                latencies.append(time.perf_counter() - t)

        for round_ in ("warm-up", "measured"):
            if round_ == "measured" and before_measured is not None:
                before_measured()
            latencies.clear()
            errors = 0
            it = iter(range(n))
            start_t = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - start_t
    q = statistics.quantiles(latencies, n=100)
    return {"rps": n / elapsed, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "errors": errors}


def label_agreement(model: Path) -> dict[str, float]:
    """Share of PhraseBank sentences whose label equals the float32 padded label, through the
    server's own loader and engine (micro-batches of 32 in corpus order)."""
    import torch

    from honed.serve.engine.classifier import ClassifierModel
    from honed.serve.engine.loading import load_classifier, parse_entry
    from honed.serve.settings import ServeSettings

    ref = parse_entry(f"clf={model}")
    ways = {  # name: (dtype, quantization, packing, HONED_ENCODER_KERNELS)
        "float32": (torch.float32, "none", False, "auto"),
        "float32 packed": (torch.float32, "none", True, "auto"),
        "bf16 packed": (torch.bfloat16, "none", True, "auto"),
        "int8 padded": (torch.float32, "int8", False, "auto"),
        "int8 packed": (torch.float32, "int8", True, "auto"),
        "int8 packed, torch": (torch.float32, "int8", True, "off"),
    }
    labels = {}
    before = os.environ.get("HONED_ENCODER_KERNELS")
    for name, (dtype, quantization, packing, kernels) in ways.items():
        os.environ["HONED_ENCODER_KERNELS"] = kernels
        parts = load_classifier(ref, "cpu", dtype, quantization, packing)
        clf = ClassifierModel("clf", *parts, settings=ServeSettings(max_batch_size=32))
        batches = [TEXTS[i : i + 32] for i in range(0, len(TEXTS), 32)]
        labels[name] = [r["label"] for b in batches for r in clf.classify(b)[0]]
    if before is None:
        os.environ.pop("HONED_ENCODER_KERNELS")
    else:
        os.environ["HONED_ENCODER_KERNELS"] = before
    want = labels.pop("float32")
    return {k: sum(map(str.__eq__, want, v)) / len(want) for k, v in labels.items()}


def run_round(model: Path, work: Path, kinds: list[str], args: argparse.Namespace) -> dict:
    """Each server in turn (never two sharing the CPUs): {kind: drive() result}."""
    results = {}
    for kind in kinds:
        proc, url = start(kind, model, args.threads, work, args.workers)
        try:
            results[kind] = asyncio.run(drive(url, args.requests, args.concurrency))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        r = results[kind]
        print(
            f"{kind:16s} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
            f"p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}",
            flush=True,
        )
    return results


def summarise(rounds: list[dict], kinds: list[str], concurrency: int) -> None:
    """Ratios are taken within each round (this VM's speed drifts by up to 25% between
    rounds), then the median over rounds."""
    for kind in kinds:
        rps = [r[kind]["rps"] for r in rounds]
        p50 = statistics.median(r[kind]["p50_ms"] for r in rounds)
        p99 = statistics.median(r[kind]["p99_ms"] for r in rounds)
        print(
            f"{kind:16s} median {statistics.median(rps):7.1f} req/s (rounds: "
            + " ".join(f"{x:.1f}" for x in rps)
            + f")  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms"
        )
    for kind in (k for k in kinds if k not in DIY):
        parts = []
        for d in (k for k in DIY if k in kinds):
            ratios = [r[kind]["rps"] / r[d]["rps"] for r in rounds]
            each = "/".join(f"{x:.2f}" for x in ratios)
            parts.append(f"{statistics.median(ratios):.2f}x {d} ({each})")
        print(f"{kind:16s} at concurrency {concurrency}: " + "  ".join(parts) + " (target >= 5x)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="classification folder (default: MiniLM + head)")
    p.add_argument("--requests", type=int, default=800)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="every server once per round")
    p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset of KINDS")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per honed batch thread and per DIY pool request (the serial DIY "
        "server uses every core)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="honed classifier batch threads or processes (the DIY server runs requests on "
        "FastAPI's thread pool, so both use every core)",
    )
    p.add_argument(
        "--no-agreement",
        action="store_true",
        help="skip the label agreement check (speed figures only: for repeated separate runs)",
    )
    args = p.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    if unknown := set(kinds) - set(KINDS):
        p.error(f"unknown kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model or default_model(work / "minilm-clf")
        rounds = []
        for round_ in range(args.rounds):
            print(f"-- round {round_ + 1}/{args.rounds}", flush=True)
            rounds.append(run_round(model, work, kinds, args))
        agree = {} if args.no_agreement else label_agreement(model)
    summarise(rounds, kinds, args.concurrency)
    for kind, share in agree.items():
        print(f"{kind} labels equal to float32 labels on {share:.2%} of {len(TEXTS)} sentences")


if __name__ == "__main__":
    main()
