"""honed's GRPO rollout loop: each distinct prompt is prefilled once and its KV cache repeated
for its group of completions, then the group decodes as one batch.

Why by hand: GRPO samples ``num_generations`` completions of every prompt. TRL's transformers
path repeats each prompt in the batch and ``generate`` prefills every copy. On a CPU the
prefill is most of a rollout: a prompt of ~60 tokens costs as much compute as ~60 decode steps
of the whole batch read from memory, so a group of 4 pays for 4 prefills where 1 would do
(``bench/rft_rollouts.py`` measures both on the same model and prompts). `generate` has no
option to share a prompt's cache across return sequences (``num_return_sequences`` expands the
inputs before the prefill), so this loop prefills, repeats the cache rows
(``Cache.batch_select_indices``) and samples itself.

Sampling follows ``generate``'s order: temperature, then top-k, then top-p (nucleus), then a
multinomial draw; temperature 0 is greedy (the same tokens as ``generate(do_sample=False)``,
tested). Each completion ends at its first EOS (kept) or after ``max_new_tokens``. The log-prob
of every sampled token under the sampling distribution is returned too (what TRL's
``rollout_func`` contract asks for; vLLM calls these "processed" log-probs).

``trl_rollout_func`` adapts the loop to ``GRPOTrainer(rollout_func=...)``: TRL hands it the
step's prompts (each repeated for its group, consecutively) and takes per-completion prompt
ids, completion ids and log-probs back; everything after (rewards, advantages, the loss) is
TRL's own.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import groupby
from typing import Any

import torch
from transformers import DynamicCache

from honed.models.sampling import Sampling, left_pad, sample_tokens

__all__ = ["Sampling", "prompt_token_ids", "sample_groups", "sample_tokens", "trl_rollout_func"]


@torch.inference_mode()
def sample_groups(
    model: Any,
    prompts: Sequence[Sequence[int]],
    group: int | Sequence[int],
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    sampling: Sampling | None = None,
    generator: torch.Generator | None = None,
) -> tuple[list[list[int]], list[list[float]]]:
    """``group`` completions of every prompt (or ``group[i]`` of prompt i), prompt by prompt:
    (completion ids up to and with the first EOS, their log-probs)."""
    counts = [group] * len(prompts) if isinstance(group, int) else list(group)
    if len(counts) != len(prompts) or min(counts, default=1) < 1:
        raise ValueError(f"group sizes {counts} do not fit {len(prompts)} prompt(s)")
    sampling = sampling or Sampling()
    device = model.device
    ids, mask = left_pad([list(p) for p in prompts], pad_id, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache)
    # The prompts' cache rows (P, heads, T, dim) -> one row per completion (B = sum(counts)).
    rows = torch.repeat_interleave(
        torch.arange(len(prompts), device=device), torch.tensor(counts, device=device)
    )
    cache.batch_select_indices(rows)
    logits = out.logits[:, -1].float()[rows]  # (B, V)
    mask, pos = mask[rows], positions[rows, -1:] + 1  # (B, T), (B, 1)
    return _decode(
        model, cache, logits, mask, pos, max_new_tokens, eos_ids, pad_id, sampling, generator
    )


def _decode(model, cache, logits, mask, pos, max_new, eos_ids, pad_id, sampling, generator):
    """The sampling loop over a batch whose cache already holds the prompts."""
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=logits.device)
    done = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    tokens, logps, ended = [], [], []  # per step: (B,), (B,), (B,) done before this token
    for step in range(max_new):
        token, logp = sample_tokens(logits, sampling, generator)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        tokens.append(token)
        logps.append(logp)
        ended.append(done.clone())
        done |= torch.isin(token, eos)
        if bool(done.all()) or step == max_new - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=pos, cache=cache)
        logits, pos = out.logits[:, -1].float(), pos + 1
    return _rows(tokens, logps, ended)


def _rows(tokens, logps, ended) -> tuple[list[list[int]], list[list[float]]]:
    """Per-step (B,) tensors -> per-row lists, cut where each row had already ended."""
    keep = ~torch.stack(ended, 1)  # (B, steps)
    ids, lps = torch.stack(tokens, 1), torch.stack(logps, 1)
    completions = [row[k].tolist() for row, k in zip(ids, keep, strict=True)]
    logprobs = [row[k].tolist() for row, k in zip(lps, keep, strict=True)]
    return completions, logprobs


# ---------------------------------------------------------------- TRL's rollout_func


def _runs(prompts: Sequence[Any]) -> tuple[list[Any], list[int]]:
    """Consecutive equal prompts (TRL repeats each for its group) -> (distinct, counts)."""
    runs = [list(g) for _, g in groupby(prompts, key=lambda p: json.dumps(p, default=str))]
    return [run[0] for run in runs], [len(run) for run in runs]


def prompt_token_ids(
    tokenizer: Any,
    prompt: Any,
    chat_template: str | None = None,
    template_kwargs: dict | None = None,
) -> list[int]:
    """A prompt's token ids as TRL's trainer makes them: chat messages through the chat
    template (with the generation prompt), text through the tokenizer."""
    if isinstance(prompt, list):
        enc = tokenizer.apply_chat_template(
            prompt,
            chat_template=chat_template,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            **(template_kwargs or {}),
        )
        return list(enc["input_ids"])
    return tokenizer(text=str(prompt))["input_ids"]


def trl_rollout_func(prompts: list, trainer: Any) -> dict[str, Any]:
    """GRPOTrainer's ``rollout_func``: the step's completions through ``sample_groups`` with
    the trainer's own sampling settings and EOS tokens."""
    from trl.models import unwrap_model_for_generation

    args, tokenizer = trainer.args, trainer.processing_class
    distinct, counts = _runs(prompts)
    template = getattr(trainer, "chat_template", None)
    kwargs = getattr(trainer, "chat_template_kwargs", None)
    prompt_ids = [prompt_token_ids(tokenizer, p, template, kwargs) for p in distinct]
    sampling = Sampling(args.temperature, args.top_p or 1.0, args.top_k or 0)
    eos_ids = list(getattr(trainer, "eos_token_ids", None) or [tokenizer.eos_token_id])
    with unwrap_model_for_generation(
        trainer.model_wrapped,
        trainer.accelerator,
        gather_deepspeed3_params=args.ds3_gather_for_generation,
        gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
    ) as model:
        was_training = model.training
        model.eval()  # no dropout while sampling (LoRA dropout included)
        try:
            completions, logprobs = sample_groups(
                model, prompt_ids, counts, args.max_completion_length, eos_ids,
                tokenizer.pad_token_id, sampling,
            )  # fmt: skip
        finally:
            model.train(was_training)
    repeated = [ids for ids, n in zip(prompt_ids, counts, strict=True) for _ in range(n)]
    return {"prompt_ids": repeated, "completion_ids": completions, "logprobs": logprobs}


def unsupported_by_rollouts(args: Any) -> str | None:
    """Why honed's loop cannot stand in for TRL's generation under ``args`` (None: it can)."""
    if getattr(args, "min_p", None) not in (None, 0, 0.0):
        return "min_p sampling"
    if getattr(args, "repetition_penalty", 1.0) != 1.0:
        return "a repetition penalty"
    if getattr(args, "use_vllm", False):
        return "vLLM generation"
    if getattr(args, "fsdp", None):
        return "FSDP (sharded parameters: TRL gathers them for its own generation)"
    return None
