"""Reward model (RLHF's second step) with TRL's RewardTrainer on prompt / chosen / rejected pairs.

The base becomes a sequence classifier with one output (``num_labels=1``): the score of
``prompt + response + eos``, read at the last non-padding token. Training minimises
-log sigmoid(r_chosen - r_rejected) (Bradley-Terry). We tokenize the pairs ourselves (prompt cut
from the left to ``max_prompt_tokens``, by default 2/3 of the length; the whole text cut to
``model.max_length``) because RewardTrainer drops over-long pairs instead of truncating them;
``honed score`` uses the same encoding (``encode``), so scores at serving time match training.

Evaluation: pairwise accuracy (share of held-out pairs scored chosen > rejected) and the margin,
against a length heuristic baseline (the longer answer wins).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from honed.data.dataset import SplitData
from honed.train import common
from honed.train.methods import get_method
from honed.train.tasks.dpo import (
    PreferenceOptions,
    _trl_kwargs,
    fit_prompt,
    preference_fields,
    preference_rows,
    prompt_budget,
)
from honed.train.tasks.seq2seq import load_tokenizer, task_options

if TYPE_CHECKING:
    from honed.models.resolve import ResolvedModel
    from honed.pipeline.paths import RunPaths
    from honed.spec import RunSpec


def encode(
    tokenizer: Any, prompt: str, response: str, max_length: int, max_prompt_tokens: int
) -> list[int]:
    """Token ids the reward model scores: (prompt tail) + response + eos, cut to max_length."""
    text = fit_prompt(tokenizer, prompt, max_prompt_tokens) + response
    ids = list(tokenizer(text)["input_ids"])
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    return ids[:max_length]


def encoded_pairs(
    rows: list[dict], tokenizer: Any, max_length: int, opts: PreferenceOptions
) -> list[dict[str, list[int]]]:
    """RewardTrainer's pre-tokenized format: chosen_ids / rejected_ids."""
    budget = prompt_budget(opts, max_length)
    return [
        {
            "chosen_ids": encode(tokenizer, r["prompt"], r["chosen"], max_length, budget),
            "rejected_ids": encode(tokenizer, r["prompt"], r["rejected"], max_length, budget),
        }
        for r in rows
    ]


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


def _fp32_head(model: Any) -> None:
    """Undo TRL's bf16 cast of the trainable score head on a 4-bit base.

    RewardTrainer casts every trainable parameter of a quantized model to bf16 (meant for the
    LoRA matrices, whose forward casts its input); the new score head (peft modules_to_save)
    is a plain Linear fed fp32 hidden states and would fail with a dtype mismatch.
    """
    import torch

    for name, param in model.named_parameters():
        if param.requires_grad and "lora_" not in name and param.dtype != torch.float32:
            param.data = param.data.float()


class RewardTask:
    name = "reward"
    options_model = PreferenceOptions  # validates the spec's task_options
    peft_task_type = "SEQ_CLS"  # LoRA also trains and saves the new score head

    data_fields = staticmethod(preference_fields)

    def prepare_data(self, spec: RunSpec) -> SplitData:
        return preference_rows(spec)

    def train(
        self, spec: RunSpec, data: SplitData, base: ResolvedModel, paths: RunPaths, resume: bool
    ) -> dict[str, Any]:
        import datasets
        from trl import RewardConfig, RewardTrainer

        from honed.models.resolve import load_kwargs

        common.setup_runtime(spec.training)
        opts = task_options(spec, PreferenceOptions)
        method = get_method(spec.method.name)
        tokenizer = load_tokenizer(base.path)
        model = load_reward_base(
            base.path, tokenizer, {**load_kwargs(spec.model), **method.load_kwargs(spec.method)}
        )
        model = method.prepare(model, spec.method, self.peft_task_type)
        max_len = spec.model.max_length
        trainer = RewardTrainer(
            model=model,
            args=RewardConfig(**_trl_kwargs(spec, paths), max_length=max_len),
            train_dataset=datasets.Dataset.from_list(
                encoded_pairs(data.train, tokenizer, max_len, opts)
            ),
            eval_dataset=datasets.Dataset.from_list(
                encoded_pairs(data.validation, tokenizer, max_len, opts)
            ),
            processing_class=tokenizer,
            callbacks=common.callbacks(spec.training),
        )
        _fp32_head(trainer.model)
        return common.train_and_save(trainer, tokenizer, paths, resume)

    def evaluate(
        self, spec: RunSpec, data: SplitData, base: ResolvedModel, paths: RunPaths
    ) -> dict[str, Any]:
        from honed.train.score import load_reward_model

        opts = task_options(spec, PreferenceOptions)
        scorer = load_reward_model(paths.model_dir, base_path=base.path, spec=spec)
        chosen = scorer.score([r["prompt"] for r in data.test], [r["chosen"] for r in data.test])
        rejected = scorer.score(
            [r["prompt"] for r in data.test], [r["rejected"] for r in data.test]
        )
        scores = pairwise_metrics(chosen, rejected)
        longer = sum(len(r["chosen"]) > len(r["rejected"]) for r in data.test)
        return {
            **{f"test_{k}": v for k, v in scores.items()},
            "test": {**scores, "rows": len(data.test)},
            "baselines": {"longer_answer_accuracy": longer / max(len(data.test), 1)},
            "task_options": opts.model_dump(),
        }


TASK = RewardTask()
