"""Preference pairs (prompt / chosen / rejected), shared by the dpo and reward tasks and by
``honed score``: options, rows, prompt truncation and TRL's training arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from honed.config_base import StrictModel
from honed.train import common
from honed.train.tasks._shared import load_text_rows, selection_metric, task_options

if TYPE_CHECKING:
    from honed.data.dataset import SplitData
    from honed.paths import RunPaths
    from honed.spec import RunSpec


class PreferenceOptions(StrictModel):
    """Options shared by the dpo and reward tasks (proposed spec section ``task_options``)."""

    prompt_field: str = Field("prompt", description="Field holding the prompt (conversation).")
    chosen_field: str = Field("chosen", description="Field holding the preferred answer.")
    rejected_field: str = Field("rejected", description="Field holding the rejected answer.")
    max_prompt_tokens: int | None = Field(
        None,
        gt=0,
        description="Prompt tokens kept, counted from the end (latest turns); default: two "
        "thirds of model.max_length, leaving the rest to the answer.",
    )
    beta: float = Field(
        0.1, gt=0, description="DPO: strength of the pull towards the reference model."
    )
    samples: int = Field(
        2, ge=0, description="dpo: held-out prompts answered by base and tuned model, side by side."
    )
    eval_batch_size: int = Field(
        4,
        gt=0,
        description="Pairs per forward pass when scoring (the vocab-sized logits of "
        "every token dominate memory).",
    )


PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")


def preference_fields(spec: RunSpec, first_row: Any = None) -> dict[str, str]:
    """{data field: spec setting naming it} of the prompt, chosen and rejected texts."""
    opts = task_options(spec, PreferenceOptions)
    return {getattr(opts, f"{c}_field"): f"task_options.{c}_field" for c in PREFERENCE_COLUMNS}


def preference_rows(spec: RunSpec) -> SplitData:
    """prompt/chosen/rejected rows. Empty answers and chosen == rejected are bad rows."""
    opts = task_options(spec, PreferenceOptions)
    fields = {
        "prompt": opts.prompt_field,
        "chosen": opts.chosen_field,
        "rejected": opts.rejected_field,
    }

    def check(row: dict[str, Any]) -> str | None:
        if row["chosen"].strip() == row["rejected"].strip():
            return "chosen and rejected answers are identical"
        return None

    return load_text_rows(
        spec,
        fields,
        key=lambda r: "\x1f".join((r["prompt"], r["chosen"], r["rejected"])),
        leak_key=lambda r: r["prompt"],  # the same conversation must not be in train and test
        check=check,
    )


def fit_prompt(tokenizer: Any, prompt: str, max_tokens: int) -> str:
    """The prompt cut to its last ``max_tokens`` tokens (text)."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return prompt
    return tokenizer.decode(ids[-max_tokens:], skip_special_tokens=False)


def prompt_budget(opts: PreferenceOptions, max_length: int) -> int:
    """Prompt tokens kept: the option, else two thirds of the sequence budget."""
    return opts.max_prompt_tokens or max(1, max_length * 2 // 3)


def trl_kwargs(spec: RunSpec, paths: RunPaths) -> dict[str, Any]:
    """TrainingArguments for TRL's pair trainers: model selection on validation loss."""
    kwargs = common.training_arguments_kwargs(spec.training, paths)
    metric, greater = selection_metric(spec, "loss", greater=False)
    kwargs.update(
        metric_for_best_model=metric,
        greater_is_better=greater,
        # Pairs have no single input_ids column to group by length on.
        train_sampling_strategy="random",
        # TRL defaults to checkpointing; a 135M model fits without it and runs faster.
        activation_checkpointing=False,
    )
    return kwargs


def encode(
    tokenizer: Any, prompt: str, response: str, max_length: int, max_prompt_tokens: int
) -> list[int]:
    """Token ids the reward model scores: (prompt tail) + response + eos, cut to max_length."""
    text = fit_prompt(tokenizer, prompt, max_prompt_tokens) + response
    ids = list(tokenizer(text)["input_ids"])
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    return ids[:max_length]


def score_ids(
    model: Any, tokenizer: Any, sequences: list[list[int]], batch_size: int
) -> list[float]:
    """One scalar reward per token sequence (right-padded batches)."""
    import torch

    model.eval()
    scores: list[float] = []
    for start in range(0, len(sequences), batch_size):
        batch = [{"input_ids": s} for s in sequences[start : start + batch_size]]
        enc = tokenizer.pad(batch, padding=True, padding_side="right", return_tensors="pt")
        with torch.no_grad():
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        scores.extend(logits.float().reshape(-1).tolist())  # logits: (batch, 1)
    return scores


def pairwise_metrics(chosen: list[float], rejected: list[float]) -> dict[str, float]:
    import numpy as np

    margins = np.array(chosen) - np.array(rejected)
    return {
        "pairwise_accuracy": float((margins > 0).mean()) if len(margins) else 0.0,
        "margin_mean": float(margins.mean()) if len(margins) else 0.0,
        "chosen_score_mean": float(np.mean(chosen)) if chosen else 0.0,
        "rejected_score_mean": float(np.mean(rejected)) if rejected else 0.0,
    }


def load_reward_base(path: Any, tokenizer: Any, extra_kwargs: dict[str, Any]) -> Any:
    """The base as a 1-output sequence classifier (its score head is new and random)."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), num_labels=1, **extra_kwargs
    )
    # Batches are padded: the model reads each score at the last non-pad token.
    model.config.pad_token_id = tokenizer.pad_token_id
    return model
