"""GRPO rollouts: completion tokens/s of TRL's GRPOTrainer generation (its defaults) against
honed's rollout loop, on the same model, prompts and sampling settings, in one run.

    .venv/bin/python bench/rft_rollouts.py [--base packaged:smollm2-135m-instruct]
        [--prompts 8] [--num-generations 4] [--max-new-tokens 24] [--rounds 3] [--threads 2]
        [--temperature 1.0] [--no-lora]

Engines, each called as a training step calls it, on a GRPOTrainer built with GRPOConfig
defaults (only the group size, completion length, temperature and batch set so that one call
covers every prompt x completion) over the policy as training sees it (a LoRA adapter, r 16,
on every linear layer, unless --no-lora):
- ``trl``: TRL's own tokenisation and generation (``_tokenize_prompts`` +
  ``_generate_single_turn``: private methods, so this bench pins trl 1.16's layout): every
  prompt repeated for its group, one ``generate`` over all of them;
- ``honed``: ``honed.train.rollouts.trl_rollout_func``, what the grpo task hands TRL as its
  ``rollout_func`` (rollout_engine: honed, the default): each prompt prefilled once, its KV
  cache repeated for the group, then one sampling loop;
- ``generate-nrs``: one ``generate`` with ``num_return_sequences`` (prompts tokenised once; the
  inputs are still expanded before the prefill).
Rounds are interleaved (every engine once per round); the median tokens/s over rounds and the
min-max spread are printed, and the ratio to TRL per round (median, spread).

Tokens counted: completion tokens up to and with the first EOS (what GRPO scores and trains
on). Prints one JSON object. Prompts: the first ones of data/rft/extract_json.jsonl (the
example's data), as chat messages.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = ROOT / "data" / "rft" / "extract_json.jsonl"


def prompts(n: int) -> list[list[dict[str, str]]]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:n]]
    return [[{"role": "user", "content": r["prompt"]}] for r in rows]


def completion_tokens(ids: list[int], eos_ids: set[int], pad_id: int | None) -> int:
    """Tokens up to and with the first EOS (padding after it not counted)."""
    for i, tok in enumerate(ids):
        if tok in eos_ids:
            return i + 1
    return sum(1 for t in ids if t != pad_id)


def generate_nrs(model: Any, tokenizer: Any, chats: list, group: int, sampling: dict) -> int:
    """One batched generate for every prompt x ``group`` completions; returns tokens made."""
    import torch

    texts = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats
    ]
    enc = tokenizer(
        texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
    )
    with torch.inference_mode():
        out = model.generate(
            **enc, num_return_sequences=group, pad_token_id=tokenizer.pad_token_id, **sampling
        )
    eos = {tokenizer.eos_token_id, *_eos_ids(model)}
    new = out[:, enc["input_ids"].shape[1] :].tolist()
    return sum(completion_tokens(row, eos, tokenizer.pad_token_id) for row in new)


def honed_loop(trainer: Any, chats: list, group: int) -> int:
    """What a grpo training step runs with rollout_engine 'honed' (the default)."""
    from honed.train.rollouts import trl_rollout_func

    out = trl_rollout_func([c for c in chats for _ in range(group)], trainer)
    return sum(len(c) for c in out["completion_ids"])  # already cut after the first EOS


def _eos_ids(model: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def trl_trainer(
    model: Any, tokenizer: Any, chats: list, group: int, max_new: int, temperature: float
) -> Any:
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="rft-bench-"),
        num_generations=group,
        max_completion_length=max_new,
        temperature=temperature,
        per_device_train_batch_size=len(chats) * group,
        report_to="none",
        use_cpu=not _cuda(),
    )
    return GRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=args,
        train_dataset=datasets.Dataset.from_list([{"prompt": c} for c in chats]),
        processing_class=tokenizer,
    )


def trl_rollout(trainer: Any, chats: list, group: int) -> int:
    repeated = [c for c in chats for _ in range(group)]  # TRL's sampler repeats each prompt
    trainer.model.eval()
    prompt_ids, images, fields = trainer._tokenize_prompts(repeated)
    completion_ids, _ = trainer._generate_single_turn(prompt_ids, images, fields, group)
    return sum(len(c) for c in completion_ids)  # TRL already cut them after the first EOS


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def interleaved(engines: dict[str, Callable[[], int]], rounds: int) -> dict[str, dict]:
    """Every engine once per round (after one warm-up each): tokens/s per round."""
    for fn in engines.values():
        fn()  # warm-up (kernels, caches)
    runs: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, fn in engines.items():
            t0 = time.perf_counter()
            tokens = fn()
            runs[name].append(tokens / (time.perf_counter() - t0))
    return runs


def spread(xs: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(xs), 2),
        "min": round(min(xs), 2),
        "max": round(max(xs), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="packaged:smollm2-135m-instruct")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-lora", action="store_true", help="the bare model, no adapter")
    a = p.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    from honed.models.config import ModelConfig
    from honed.models.resolve import resolve_model
    from honed.train.tasks._shared import DEFAULT_CHAT_TEMPLATE, load_tokenizer

    torch.set_num_threads(a.threads)
    set_seed(0)
    base = resolve_model(ModelConfig(base=a.base))
    tokenizer = load_tokenizer(base.path, DEFAULT_CHAT_TEMPLATE)
    model = AutoModelForCausalLM.from_pretrained(str(base.path))
    if not a.no_lora:
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    chats = prompts(a.prompts)
    g = a.num_generations
    trainer = trl_trainer(model, tokenizer, chats, g, a.max_new_tokens, a.temperature)
    # generate-nrs: the same sampling as TRL's defaults (top_p 1, top_k 0, no penalty).
    sampling = {
        "do_sample": True,
        "temperature": a.temperature,
        "top_p": 1.0,
        "top_k": 0,
        "max_new_tokens": a.max_new_tokens,
        "eos_token_id": trainer.eos_token_ids,
    }
    policy = trainer.model
    engines = {
        "trl": lambda: trl_rollout(trainer, chats, g),
        "honed": lambda: honed_loop(trainer, chats, g),
        "generate-nrs": lambda: generate_nrs(policy, tokenizer, chats, g, sampling),
    }
    runs = interleaved(engines, a.rounds)
    ratio = [h / t for h, t in zip(runs["honed"], runs["trl"], strict=True)]
    result = {
        "bench": "rft_rollouts",
        "base": a.base,
        "lora": not a.no_lora,
        "prompts": a.prompts,
        "num_generations": g,
        "max_new_tokens": a.max_new_tokens,
        "temperature": a.temperature,
        "threads": a.threads,
        "rounds": a.rounds,
        "load_average": os.getloadavg(),
        "tokens_per_s": {name: spread(xs) for name, xs in runs.items()},
        "ratio_honed_to_trl": spread(ratio),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
