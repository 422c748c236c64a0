"""Many LoRA adapters over one base: memory and throughput (engine level, no HTTP).

    .venv/bin/python bench/serve_adapters.py [--base packaged:smollm2-135m-instruct]
                                             [--adapters 8] [--requests 64] [--max-tokens 16]

Default base: a small random Llama (hidden 512, 8 layers, ~20M parameters) built in-process.
Figures, each with its baseline from the same run:
  * resident memory (RSS) of base + N adapters vs the base alone (separate fresh processes),
    and N merged copies beside it (measured when small, else N x the base's weight bytes);
  * mixed-adapter throughput (requests for N adapters share forward passes) vs
    single-adapter throughput (same batching, all requests on one adapter);
  * mixed vs switching with `set_adapter` per request (one request at a time).
The throughput figures come twice: with continuous batching (the default: rows join and leave
the running batch between decode steps), and with one `generate` per micro-batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package (tiny models)

PROMPTS = ["hello world", "the quick brown fox", "profits rose sharply", "what is the weather"]


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))
    return kib / 1024


def build_models(base_arg: str | None, root: Path, k: int) -> tuple[Path, list[Path]]:
    from tests.fixtures.tiny_models import build_tiny_adapters, build_tiny_llm

    from honed.serve.engine.loading import resolve_folder

    if base_arg:
        base = resolve_folder(base_arg)
    else:
        base = build_tiny_llm(root / "base", hidden=512, layers=8)
    adapters = build_tiny_adapters(base, root / "adapters", k=k, rank=8)
    return base, adapters


def measure_rss(mode: str, base: Path, adapters: list[Path]) -> dict[str, float]:
    """Run in a fresh process: RSS before and after loading `mode`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    before = rss_mib()
    model = AutoModelForCausalLM.from_pretrained(str(base)).eval()
    copies = [model]
    if mode == "adapters":
        model = PeftModel.from_pretrained(model, str(adapters[0]), adapter_name="a0")
        for i, a in enumerate(adapters[1:], 1):
            model.load_adapter(str(a), adapter_name=f"a{i}")
        copies = [model]
    elif mode == "merged":
        for a in adapters[1:]:
            m = AutoModelForCausalLM.from_pretrained(str(base)).eval()
            copies.append(PeftModel.from_pretrained(m, str(a)).merge_and_unload())
    for m in copies:
        with torch.inference_mode():  # touch every weight: lazily mapped files count once read
            m(input_ids=torch.tensor([[1, 2, 3]]))
    return {"before": before, "after": rss_mib()}


def rss_in_subprocess(mode: str, base: Path, adapters: list[Path]) -> dict[str, float]:
    arg = json.dumps({"mode": mode, "base": str(base), "adapters": [str(a) for a in adapters]})
    out = subprocess.run(
        [sys.executable, __file__, "--_rss", arg],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


async def engine_throughput(gen, names: list[str], n: int, max_tokens: int) -> float:
    from honed.serve.engine.generation import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    jobs = []
    for i in range(n):
        ids = gen.encode_text(PROMPTS[i % len(PROMPTS)])
        jobs.append(gen.submit(ids, names[i % len(names)], params))
    start = time.perf_counter()

    async def drain(job):
        while (await job.events.get())[0] != "done":
            pass

    await asyncio.gather(*(drain(j) for j in jobs))
    return sum(j.completion_tokens for j in jobs) / (time.perf_counter() - start)


def switching_throughput(gen, names: list[str], n: int, max_tokens: int) -> float:
    """Baseline: one request at a time, `set_adapter(name)` before each."""
    model, tok = gen.model, gen.tokenizer
    tokens = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(n):
            model.set_adapter(gen.adapters[names[i % len(names)]].internal)
            ids = torch.tensor([gen.encode_text(PROMPTS[i % len(PROMPTS)])])
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
            tokens += out.shape[1] - ids.shape[1]
    return tokens / (time.perf_counter() - start)


async def throughput(
    base: Path, adapters: list[Path], n: int, max_tokens: int, continuous: bool
) -> dict:
    from honed.serve.engine.loading_plan import build_engine
    from honed.serve.settings import ServeSettings

    names = [f"a{i}" for i in range(len(adapters))]
    models = [str(base)] + [f"{nm}={p}" for nm, p in zip(names, adapters, strict=True)]
    settings = ServeSettings(
        models=models,
        max_batch_size=32,
        max_wait_ms=5,
        max_tokens_cap=max_tokens,
        max_queue=4 * n,
        continuous_batching=continuous,
    )
    engine = build_engine(settings)
    await engine.start(warmup=True)
    gen = engine.generator
    await engine_throughput(gen, names, 8, max_tokens)  # warm-up
    single = await engine_throughput(gen, names[:1], n, max_tokens)
    mixed = await engine_throughput(gen, names, n, max_tokens)
    switching = await gen.batcher.call(switching_throughput, gen, names, n // 2, max_tokens)
    await engine.stop()
    return {"single": single, "mixed": mixed, "switching": switching}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", help="base model (folder, ref or packaged:NAME)")
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--_rss", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._rss:
        spec = json.loads(args._rss)
        print(
            json.dumps(
                measure_rss(spec["mode"], Path(spec["base"]), [Path(a) for a in spec["adapters"]])
            )
        )
        return
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        base, adapters = build_models(args.base, Path(tmp), args.adapters)
        weights = sum(f.stat().st_size for f in base.glob("*.safetensors")) / 2**20
        one = rss_in_subprocess("base", base, adapters)
        many = rss_in_subprocess("adapters", base, adapters)
        if weights * args.adapters < 2048:
            merged = rss_in_subprocess("merged", base, adapters)["after"]
            merged_note = "measured"
        else:
            merged = one["after"] + (args.adapters - 1) * weights
            merged_note = "estimated: base process + 7 x weight bytes"
        tps = {
            mode: asyncio.run(
                throughput(base, adapters, args.requests, args.max_tokens, mode == "continuous")
            )
            for mode in ("static", "continuous")
        }
    k = args.adapters
    print(f"base: {base.name if args.base else 'random Llama h512 x8'} ({weights:.0f} MiB weights)")
    print(f"RSS base alone          {one['after']:8.0f} MiB")
    grow_one, grow_many = one["after"] - one["before"], many["after"] - many["before"]
    print(
        f"  (loading alone: base {grow_one:.0f} MiB, base + {k} adapters {grow_many:.0f} MiB, "
        f"ratio {grow_many / grow_one:.3f}x)"
    )
    print(
        f"RSS base + {k} adapters   {many['after']:8.0f} MiB  "
        f"ratio {many['after'] / one['after']:.3f}x (target <= 1.15x)"
    )
    print(
        f"RSS {k} merged copies     {merged:8.0f} MiB  ratio {merged / one['after']:.2f}x "
        f"({merged_note})"
    )
    for mode, tp in tps.items():
        print(f"[{mode}] tokens/s single adapter {tp['single']:8.1f}")
        print(
            f"[{mode}] tokens/s mixed {k} adapters {tp['mixed']:8.1f}  ratio mixed/single "
            f"{tp['mixed'] / tp['single']:.2f}x (target >= 0.7x)"
        )
        print(
            f"[{mode}] tokens/s set_adapter per request {tp['switching']:8.1f}  ratio "
            f"mixed/switching {tp['mixed'] / tp['switching']:.2f}x (target >= 3x)"
        )


if __name__ == "__main__":
    main()
