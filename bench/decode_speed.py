"""Batch-1 decode speed against the memory-bandwidth limit, in one run.

Prints: the measured memory bandwidth (a 256 MB float32 sum on --threads threads), the weight
bytes read per decoded token (every parameter once; tied embeddings once), the bandwidth limit
in tokens/s, and, as the median of --repeats interleaved repeats with min-max spread:
plain `model.generate` at batch 1; `fast_generate` (honed.models.fast_decode: static KV
cache + the fused C++ step of honed.models.cpu_decode; prefill and sampling included); the
fused step alone and the torch.compile'd step alone (time per output token after the first,
no prefill); the server engine's running batch at batch 1
(per-token row work: detokenizing, stop checks, deltas) with decode 'static' and 'eager';
concurrency 8 (8 rows of different prompt lengths in one running batch) with 'static'
and 'eager'; and a lone row on a random LoRA adapter (--lora rank, all seven projections)
through the engine, fused step against eager.
Also the one-time compile (warm-up) seconds and the load average around each figure.

    .venv/bin/python bench/decode_speed.py [--base packaged:smollm2-135m-instruct]
        [--tokens 48] [--repeats 3] [--threads 2] [--dtype float32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import torch

PROMPT = "Write a short note about the quarterly results:"
PROMPTS_8 = [
    PROMPT,
    "hello",
    "Summarise: revenue grew while costs fell in the third quarter of the year.",
    "What is the capital of France?",
    "List three colours.",
    "The market was flat and nothing much happened at all today, said the analyst.",
    "Translate to French: good morning",
    "Tell me a joke about databases.",
]


def bandwidth_gbs(threads: int) -> float:
    """GB/s reading a 256 MB float32 tensor (best of 5 sums: the machine's capability)."""
    torch.set_num_threads(threads)
    x = torch.ones(64 * 1024 * 1024, dtype=torch.float32)
    x.sum()
    best = min(_timed(x.sum) for _ in range(5))
    return x.numel() * 4 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def weight_bytes(model) -> int:
    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # tied weights appear once
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def plain(model, ids, n: int) -> float:
    with torch.inference_mode():
        t = _timed(
            lambda: model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )
        )
    return n / t


def fast(model, ids, n: int) -> float:
    from honed.models.fast_decode import fast_generate

    return n / _timed(lambda: fast_generate(model, ids, n, eos_token_id=None))


def steps(decoder, ids, n: int) -> float:
    """Tokens/s of ``decoder``'s one-token step alone (time per output token after the first:
    no prefill, no sampling), the decode figure serving engines quote as TPOT."""
    with torch.inference_mode():
        token = decoder.prefill(ids, torch.ones_like(ids)).argmax(-1)
        took = _timed(lambda: [decoder.step(token) for _ in range(n - 1)])
    return (n - 1) / took


def engine(model, tok, prompts: list[str], n: int, solo, adapter: str | None = None) -> float:
    """Tokens/s of the server's running batch (honed.serve.engine.continuous) on ``prompts``
    (on peft ``adapter`` when given: ``model`` is then a PeftModel holding it)."""
    from honed.serve.engine.continuous import RunningBatch
    from honed.serve.engine.generation import GenJob, SamplingParams

    loop = asyncio.new_event_loop()  # deltas queue up on it; nothing reads them
    params = SamplingParams(max_tokens=n, temperature=0.0)
    deadline = time.monotonic() + 3600
    jobs = [GenJob(tok(p)["input_ids"], params, adapter, deadline, loop) for p in prompts]
    mixed = adapter is not None
    batch = RunningBatch(model, tok, "cpu", mixed=mixed, solo=solo)
    batch.decoder.eos_ids = set()  # every row runs its n tokens

    def run() -> None:
        batch.admit([r for j in jobs for r in j.rows])
        while batch.rows:
            batch.step()
            batch.evict()

    t = _timed(run)
    loop.close()
    return sum(len(r.tokens) for j in jobs for r in j.rows) / t


def with_lora(model, rank: int):
    """A copy of ``model`` holding one random LoRA adapter ("bench", rank ``rank``, on all
    seven projections of every layer; B non-zero so it changes the outputs)."""
    import copy

    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False)
    return get_peft_model(copy.deepcopy(model), cfg, adapter_name="bench").eval()


def summary(xs: list[float]) -> str:
    return f"{statistics.median(xs):7.1f} (min {min(xs):.1f}, max {max(xs):.1f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="packaged:smollm2-135m-instruct")
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--lora", type=int, default=16, help="rank of the LoRA row figures (0: none)")
    args = p.parse_args()
    from honed.models.fast_decode import STATIC_LEN, StaticDecoder, decoder_for
    from honed.serve.engine import loading

    folder = loading.resolve_folder(args.base)
    model = loading.load_causal_lm(folder, "cpu", getattr(torch, args.dtype))
    tok = loading.load_tokenizer(folder, "left")
    bw = bandwidth_gbs(args.threads)
    torch.set_num_threads(args.threads)
    nbytes = weight_bytes(model)
    limit = bw * 1e9 / nbytes
    print(f"memory bandwidth      {bw:7.1f} GB/s (256 MB float32 sum, {args.threads} threads)")
    print(f"weights per token     {nbytes / 1e9:7.3f} GB ({args.dtype})")
    print(f"bandwidth limit       {limit:7.1f} tokens/s at batch 1")
    solo = decoder_for(model, 1, STATIC_LEN)
    kind = "fused step" if solo.fused else f"compiled step (no fused step: {args.dtype}?)"
    print(f"warm-up               {solo.warmup():7.1f} s, once per process ({kind})", flush=True)
    compiled = StaticDecoder(model, 1, STATIC_LEN, fused=False)
    print(f"compile (warm-up)     {compiled.warmup():7.1f} s, once per process", flush=True)
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    runs: dict[str, list[float]] = {}
    loads: list[float] = []
    bws: list[float] = []
    measures = {
        "plain generate, batch 1": lambda: plain(model, ids, args.tokens),
        "fast_generate, batch 1": lambda: fast(model, ids, args.tokens),
        "fused step only, b. 1": lambda: steps(solo, ids, args.tokens),
        "compiled step only, b. 1": lambda: steps(compiled, ids, args.tokens),
        "engine static, batch 1": lambda: engine(model, tok, [PROMPT], args.tokens, solo),
        "engine eager, batch 1": lambda: engine(model, tok, [PROMPT], args.tokens, None),
        "engine static, conc. 8": lambda: engine(model, tok, PROMPTS_8, args.tokens, solo),
        "engine eager, conc. 8": lambda: engine(model, tok, PROMPTS_8, args.tokens, None),
    }
    if args.lora:
        peft_model = with_lora(model, args.lora)
        peft_solo = StaticDecoder(peft_model, 1, STATIC_LEN)
        measures["engine static, LoRA row"] = lambda: engine(
            peft_model, tok, [PROMPT], args.tokens, peft_solo, "bench"
        )
        measures["engine eager, LoRA row"] = lambda: engine(
            peft_model, tok, [PROMPT], args.tokens, None, "bench"
        )
    fast(model, ids, 4)  # first-call costs out of the way
    plain(model, ids, 4)
    for rep in range(args.repeats):  # interleaved: load changes hit every figure alike
        for name, fn in measures.items():
            runs.setdefault(name, []).append(fn())
        bws.append(bandwidth_gbs(args.threads))  # the limit as the load is now, too
        torch.set_num_threads(args.threads)
        loads.append(os.getloadavg()[0])
        print(f"repeat {rep + 1}: " + ", ".join(f"{v[-1]:.1f}" for v in runs.values()), flush=True)
    base = statistics.median(runs["plain generate, batch 1"])
    limit = statistics.median(bws) * 1e9 / nbytes
    print(f"bandwidth per repeat  {summary(bws)} GB/s: limit {limit:.1f} tokens/s (used below)")
    for name, xs in runs.items():
        m = statistics.median(xs)
        print(
            f"{name:24s} {summary(xs)} tokens/s  {m / limit:5.1%} of limit  {m / base:4.2f}x plain"
        )
    ratio = [
        s / e
        for s, e in zip(runs["engine static, conc. 8"], runs["engine eager, conc. 8"], strict=True)
    ]
    print(f"conc. 8 static/eager    {statistics.median(ratio):.2f}x")
    print(f"load average (1 min) during repeats: {', '.join(f'{x:.1f}' for x in loads)}")


if __name__ == "__main__":
    main()
