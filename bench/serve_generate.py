"""Generation over HTTP (SSE streaming): tokens/s at batch 1 and at concurrency 8, and
time-to-first-token p50/p99; baseline: plain `model.generate` at batch 1 in this process.
The server runs three times, one after the other: the defaults (continuous batching: requests
join the running batch between decode steps; a request decoding alone on the fused CPU step),
`--decode eager` (continuous batching, every step the model's own forward: the default before
the fused step), and `--no-continuous-batching` (one `generate` per micro-batch, which later
requests wait for).

    .venv/bin/python bench/serve_generate.py [--base packaged:smollm2-135m-instruct]
                                             [--requests 24] [--max-tokens 32]

Default base: a small random Llama (hidden 512, 8 layers) built in-process. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package (tiny models)
from serve_classify import start

PROMPT = "Write a short note about the quarterly results:"


async def one(client: httpx.AsyncClient, max_tokens: int) -> tuple[float, int]:
    body = {
        "model": "base",
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    t0 = time.perf_counter()
    ttft, chunks = None, 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:  # a wrong model id once made this bench report 0 tokens/s
            raise SystemExit(f"/v1/completions answered {r.status_code}: {await r.aread()!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if json.loads(line[6:])["choices"][0]["text"]:
                ttft = ttft or time.perf_counter() - t0
                chunks += 1
    return (ttft or time.perf_counter() - t0), chunks


async def drive(url: str, n: int, concurrency: int, max_tokens: int) -> dict[str, float]:
    ttfts: list[float] = []
    tokens = 0
    it = iter(range(n))
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        await one(client, 4)  # warm-up

        async def worker() -> None:
            nonlocal tokens
            for _ in it:
                ttft, chunks = await one(client, max_tokens)
                ttfts.append(ttft)
                tokens += chunks

        start_t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start_t
    q = statistics.quantiles(ttfts, n=100) if len(ttfts) > 1 else [ttfts[0]] * 99
    return {"tps": tokens / elapsed, "ttft_p50": q[49] * 1000, "ttft_p99": q[98] * 1000}


def plain_generate(base: Path, n: int, max_tokens: int, threads: int) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base)).eval()
    ids = tok(PROMPT, return_tensors="pt")
    tokens = 0
    with torch.inference_mode():
        model.generate(**ids, max_new_tokens=4, do_sample=False)
        start_t = time.perf_counter()
        for _ in range(n):
            out = model.generate(
                **ids,
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
            )
            tokens += out.shape[1] - ids["input_ids"].shape[1]
    return tokens / (time.perf_counter() - start_t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", help="base model (folder, ref or packaged:NAME)")
    p.add_argument("--requests", type=int, default=24)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    from tests.fixtures.tiny_models import build_tiny_llm

    from honed.serve.engine.loading import resolve_folder

    with tempfile.TemporaryDirectory() as tmp:
        base = (
            resolve_folder(args.base)
            if args.base
            else build_tiny_llm(Path(tmp) / "base", hidden=512, layers=8)
        )
        plain = plain_generate(base, max(4, args.requests // 4), args.max_tokens, args.threads)
        results = {}
        for kind in ("honed-gen", "honed-gen-eager", "honed-gen-static"):
            proc, url = start(kind, base, args.threads, Path(tmp))
            try:
                b1 = asyncio.run(drive(url, max(4, args.requests // 4), 1, args.max_tokens))
                c8 = asyncio.run(drive(url, args.requests, 8, args.max_tokens))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            results[kind] = (b1, c8)
    print(f"plain generate, batch 1             {plain:8.1f} tokens/s (baseline)")
    for kind, runs in results.items():
        for label, r in zip(("concurrency 1", "concurrency 8"), runs, strict=True):
            print(
                f"{kind:20s} {label}  {r['tps']:8.1f} tokens/s  ratio {r['tps'] / plain:.2f}x  "
                f"TTFT p50 {r['ttft_p50']:.0f} ms p99 {r['ttft_p99']:.0f} ms"
            )


if __name__ == "__main__":
    main()
