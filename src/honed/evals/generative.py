"""Evaluation helpers shared by the generative tasks (sft, seq2seq, dpo).

The public API is small:

- ``GenerationSettings``: decoding settings; recorded next to every sample so a report says how
  its texts were produced.
- ``completion_loss(model, tokenizer, rows)`` -> ``{"loss", "perplexity", "tokens", "rows"}``:
  mean negative log-likelihood of the completions given their prompts (prompt tokens are not
  scored), and its exponential, the perplexity. ``perplexity`` is an alias.
- ``generate(model, tokenizer, prompts, settings)`` -> list of generated texts (prompt removed).
- ``generate_samples(models, tokenizer, rows, settings)`` / ``side_by_side(rows, outputs)`` ->
  rows ``{"prompt", "reference", <model name>: text, ...}``; ``write_samples`` writes them to
  ``samples.md`` and ``samples.json`` in the run folder.
- ``format_adherence(texts, kind, pattern=None)`` -> share of texts that are valid JSON
  (``kind="json"``) or fully match a regex (``kind="regex"``).

Rows are dicts with ``prompt`` and ``completion``. For a causal LM each is either a list of chat
messages (``[{"role": ..., "content": ...}]``, rendered with the tokenizer's chat template) or
plain text; for an encoder-decoder model (T5) both are plain text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from honed.progress import progress

#: Files ``write_samples`` creates in the run folder.
SAMPLES_MD = "samples.md"
SAMPLES_JSON = "samples.json"


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings (``model.generate`` keyword arguments)."""

    max_new_tokens: int = 64
    do_sample: bool = False  # greedy: reproducible samples in reports
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.1
    batch_size: int = 8

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_chat(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, Mapping) and "role" in m for m in value)


def render_prompt(tokenizer: Any, prompt: Any) -> str:
    """Prompt text as the model sees it: chat messages go through the chat template."""
    if _is_chat(prompt):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return str(prompt)


def _causal_ids(tokenizer: Any, row: Mapping[str, Any], max_length: int) -> tuple[list, int]:
    """(token ids of prompt + completion, number of prompt tokens) for a causal LM."""
    prompt, completion = row["prompt"], row["completion"]
    if _is_chat(prompt):
        prompt_ids = tokenizer.apply_chat_template(
            prompt, tokenize=True, add_generation_prompt=True
        )
        full_ids = tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=True)
    else:
        prompt_ids = tokenizer(str(prompt), add_special_tokens=True)["input_ids"]
        eos = tokenizer.eos_token or ""
        full_ids = tokenizer(str(prompt) + str(completion) + eos, add_special_tokens=True)[
            "input_ids"
        ]
    prompt_ids, full_ids = _as_list(prompt_ids), _as_list(full_ids)
    return full_ids[:max_length], min(len(prompt_ids), max_length)


def _as_list(ids: Any) -> list[int]:
    # apply_chat_template may return a BatchEncoding (transformers 5) or a plain list.
    if isinstance(ids, Mapping):
        ids = ids["input_ids"]
    return list(ids)


def _causal_batch(tokenizer: Any, rows: Sequence[Mapping[str, Any]], max_length: int):
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [_causal_ids(tokenizer, r, max_length) for r in rows]
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (b, seq), right padded
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)  # -100: not scored
    for i, (ids, n_prompt) in enumerate(encoded):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        labels[i, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention}, labels


def _seq2seq_batch(tokenizer: Any, rows: Sequence[Mapping[str, Any]], max_length: int):
    enc = tokenizer(
        [str(r["prompt"]) for r in rows],
        text_target=[str(r["completion"]) for r in rows],
        truncation=True,
        max_length=max_length,
        padding=True,
        return_tensors="pt",
    )
    labels = enc.pop("labels")
    labels[labels == tokenizer.pad_token_id] = -100
    return dict(enc) | {"labels": labels}, labels


def _token_nll(model: Any, batch: dict, labels: Any, encoder_decoder: bool) -> tuple[float, int]:
    """(sum of token NLL, scored tokens) of one batch; logits shape (b, seq, vocab)."""
    import torch

    logits = model(**batch).logits.float()
    if not encoder_decoder:  # causal: token t is predicted from tokens < t
        logits, labels = logits[:, :-1], labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return float(nll), int((labels != -100).sum())


def completion_loss(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    batch_size: int = 8,
    max_length: int = 1024,
) -> dict[str, float]:
    """Token-weighted mean NLL of each row's completion given its prompt, and perplexity."""
    import torch

    if not rows:
        raise ValueError("completion_loss: no rows to score")
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for start in progress(range(0, len(rows), batch_size), "scoring", unit="batch"):
            part = rows[start : start + batch_size]
            make = _seq2seq_batch if encoder_decoder else _causal_batch
            batch, labels = make(tokenizer, part, max_length)
            nll, count = _token_nll(model, batch, labels, encoder_decoder)
            total, tokens = total + nll, tokens + count
    model.train(was_training)
    loss = total / max(tokens, 1)
    return {
        "loss": round(loss, 5),
        "perplexity": round(math.exp(min(loss, 50.0)), 4),
        "tokens": tokens,
        "rows": len(rows),
    }


perplexity = completion_loss


def generate(
    model: Any, tokenizer: Any, prompts: Sequence[Any], settings: GenerationSettings
) -> list[str]:
    """Generated continuation of each prompt (chat messages or text), prompt removed."""
    import torch

    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    texts = [render_prompt(tokenizer, p) for p in prompts]
    # Chat templates already hold the special tokens (e.g. <|im_start|>): add none twice.
    add_special = not (prompts and _is_chat(prompts[0]))
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right end
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    outputs: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            batches = range(0, len(texts), settings.batch_size)
            for start in progress(batches, "generating", unit="batch"):
                part = texts[start : start + settings.batch_size]
                enc = tokenizer(
                    part, return_tensors="pt", padding=True, add_special_tokens=add_special
                )
                out = model.generate(
                    **enc, pad_token_id=tokenizer.pad_token_id, **settings.generate_kwargs()
                )  # (b, prompt + new) for causal LMs; (b, new) for encoder-decoders
                new = out if encoder_decoder else out[:, enc["input_ids"].shape[1] :]
                outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return [o.strip() for o in outputs]


def _prompt_text(prompt: Any) -> str:
    if _is_chat(prompt):
        return "\n".join(f"[{m['role']}] {m['content']}" for m in prompt)
    return str(prompt)


def _completion_text(completion: Any) -> str:
    if _is_chat(completion):
        return "\n".join(str(m["content"]) for m in completion)
    return str(completion)


def side_by_side(
    rows: Sequence[Mapping[str, Any]], outputs: Mapping[str, Sequence[str]]
) -> list[dict[str, str]]:
    """Rows ``{"prompt", "reference", <name>: text, ...}`` from per-model output lists."""
    samples = [
        {"prompt": _prompt_text(r["prompt"]), "reference": _completion_text(r["completion"])}
        for r in rows
    ]
    for name, texts in outputs.items():
        for sample, text in zip(samples, texts, strict=True):
            sample[name] = text
    return samples


def generate_samples(
    models: Mapping[str, Any],
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    settings: GenerationSettings,
) -> list[dict[str, str]]:
    """Side-by-side outputs of several distinct models (e.g. {"base": ..., "tuned": ...}).

    For a peft model and its own base use ``side_by_side`` with outputs generated inside and
    outside ``model.disable_adapter()``: one model object cannot be both at once.
    """
    prompts = [r["prompt"] for r in rows]
    return side_by_side(
        rows, {name: generate(m, tokenizer, prompts, settings) for name, m in models.items()}
    )


def write_samples(
    samples: Sequence[Mapping[str, str]], folder: Path, settings: GenerationSettings, title: str
) -> dict[str, str]:
    """Write ``samples.md`` (readable) and ``samples.json``; returns their paths."""
    folder = Path(folder)
    payload = {"generation": settings.to_dict(), "samples": list(samples)}
    (folder / SAMPLES_JSON).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    lines = [f"# {title}: sample outputs", "", f"Generation settings: `{settings.to_dict()}`", ""]
    for i, sample in enumerate(samples, start=1):
        lines += [f"## Sample {i}", ""]
        for key, text in sample.items():
            lines += [f"**{key}**", "", "```text", text.replace("```", "'''"), "```", ""]
    (folder / SAMPLES_MD).write_text("\n".join(lines))
    return {"markdown": str(folder / SAMPLES_MD), "json": str(folder / SAMPLES_JSON)}


def _valid_json(text: str) -> bool:
    try:
        json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return False
    return True


def format_adherence(
    texts: Sequence[str], kind: str, pattern: str | None = None, examples: int = 3
) -> dict[str, Any]:
    """Share of texts in the declared format: ``kind`` "json" (parses) or "regex" (fullmatch)."""
    if kind == "json":
        check = _valid_json
    elif kind == "regex":
        if not pattern:
            raise ValueError("format_adherence: kind 'regex' needs a pattern")
        try:
            compiled = re.compile(pattern, re.DOTALL)
        except re.error as err:
            raise ValueError(f"format_adherence: bad regex {pattern!r}: {err}") from None

        def check(text: str) -> bool:
            return compiled.fullmatch(text.strip()) is not None
    else:
        raise ValueError(f"format_adherence: unknown kind {kind!r}; use 'json' or 'regex'")
    ok = [check(t) for t in texts]
    return {
        "kind": kind,
        "pattern": pattern,
        "rate": round(sum(ok) / len(ok), 4) if ok else 0.0,
        "valid": sum(ok),
        "total": len(ok),
        "failures": [t for t, good in zip(texts, ok, strict=True) if not good][:examples],
    }
