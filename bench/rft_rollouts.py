"""GRPO rollouts: completion tokens/s of TRL's GRPOTrainer generation (its defaults) against
honed's rollout loop, on the same model, prompts and sampling settings, in one run.

    .venv/bin/python bench/rft_rollouts.py [--base packaged:smollm2-135m-instruct]
        [--prompts 8] [--num-generations 4] [--max-new-tokens 24] [--rounds 2] [--threads 2]

TRL: a GRPOTrainer built with GRPOConfig defaults (only the group size, completion length and
batch set so one generation call covers every prompt x completion), its own prompt tokenisation
and generation (``_tokenize_prompts`` + ``_generate_single_turn``: the path a training step
takes; private methods, so this bench pins trl 1.16's layout).

honed: ``honed_rollout`` below: one batched ``model.generate`` per round with
``num_return_sequences`` (prompts rendered and tokenised once, not once per completion; the
decode loop is transformers' either way, so today the two should be close).
``ROLLOUT_ENGINES`` is the hook where honed's fast decode path (serve/engine, static KV cache,
compiled step) plugs in: add an engine there and pass ``--engine NAME``; the grpo task's own
hook is ``honed.train.tasks.grpo.rollout_generate``.

Tokens counted: completion tokens up to and with the first EOS (what GRPO scores and trains
on). Prints one JSON object. Default prompts: the first ones of data/rft/arithmetic_json.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = ROOT / "data" / "rft" / "arithmetic_json.jsonl"


def prompts(n: int) -> list[list[dict[str, str]]]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:n]]
    return [[{"role": "user", "content": r["prompt"]}] for r in rows]


def completion_tokens(ids: list[int], eos_ids: set[int], pad_id: int | None) -> int:
    """Tokens up to and with the first EOS (padding after it not counted)."""
    for i, tok in enumerate(ids):
        if tok in eos_ids:
            return i + 1
    return sum(1 for t in ids if t != pad_id)


def honed_rollout(model: Any, tokenizer: Any, chats: list, group: int, sampling: dict) -> int:
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


#: Rollout engines honed can use (name -> fn(model, tokenizer, prompts, group, sampling) ->
#: tokens). The fast decode path of serve/engine plugs in here.
ROLLOUT_ENGINES: dict[str, Callable[..., int]] = {"generate": honed_rollout}


def _eos_ids(model: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def trl_trainer(model: Any, tokenizer: Any, chats: list, group: int, max_new: int) -> Any:
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="rft-bench-"),
        num_generations=group,
        max_completion_length=max_new,
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


def timed(fn: Callable[[], int], rounds: int) -> dict[str, float]:
    fn()  # warm-up (kernels, caches)
    tokens, seconds = 0, 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        tokens += fn()
        seconds += time.perf_counter() - t0
    return {
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="packaged:smollm2-135m-instruct")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--engine", default="generate", choices=sorted(ROLLOUT_ENGINES))
    a = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, set_seed

    from honed.models.config import ModelConfig
    from honed.models.resolve import resolve_model
    from honed.train.tasks._shared import DEFAULT_CHAT_TEMPLATE, load_tokenizer

    torch.set_num_threads(a.threads)
    set_seed(0)
    base = resolve_model(ModelConfig(base=a.base))
    tokenizer = load_tokenizer(base.path, DEFAULT_CHAT_TEMPLATE)
    model = AutoModelForCausalLM.from_pretrained(str(base.path))
    chats = prompts(a.prompts)
    trainer = trl_trainer(model, tokenizer, chats, a.num_generations, a.max_new_tokens)
    # The same sampling as TRL's defaults (temperature 1, top_p 1, top_k 0, no penalty).
    sampling = {
        "do_sample": True,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "max_new_tokens": a.max_new_tokens,
        "eos_token_id": trainer.eos_token_ids,
    }
    engine = ROLLOUT_ENGINES[a.engine]
    policy = trainer.model
    honed = timed(lambda: engine(policy, tokenizer, chats, a.num_generations, sampling), a.rounds)
    trl = timed(lambda: trl_rollout(trainer, chats, a.num_generations), a.rounds)
    result = {
        "bench": "rft_rollouts",
        "base": a.base,
        "prompts": a.prompts,
        "num_generations": a.num_generations,
        "max_new_tokens": a.max_new_tokens,
        "threads": a.threads,
        "load_average": os.getloadavg(),
        "trl_grpo_defaults": trl,
        f"honed_{a.engine}": honed,
        "ratio_honed_to_trl": round(honed["tokens_per_s"] / trl["tokens_per_s"], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
