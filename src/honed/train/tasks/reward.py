"""Reward model (RLHF's second step) with TRL's RewardTrainer on prompt / chosen / rejected pairs.

The base becomes a sequence classifier with one output (``num_labels=1``): the score of
``prompt + response + eos``, read at the last non-padding token. Training minimises
-log sigmoid(r_chosen - r_rejected) (Bradley-Terry). We tokenize the pairs ourselves (prompt cut
from the left to ``max_prompt_tokens``, by default 2/3 of the length; the whole text cut to
``model.max_length``) because RewardTrainer drops over-long pairs instead of truncating them;
``honed score`` uses the same encoding (``_preference.encode``), so scores at serving time
match training.

Evaluation: pairwise accuracy (share of held-out pairs scored chosen > rejected) and the margin,
against a length heuristic baseline (the longer answer wins).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from honed.data.dataset import SplitData
from honed.train import common
from honed.train.methods import get_method
from honed.train.tasks._preference import (
    PreferenceOptions,
    encode,
    load_reward_base,
    pairwise_metrics,
    preference_fields,
    preference_rows,
    prompt_budget,
    trl_kwargs,
)
from honed.train.tasks._shared import load_tokenizer, task_options

if TYPE_CHECKING:
    from honed.models.resolve import ResolvedModel
    from honed.paths import RunPaths
    from honed.spec import RunSpec


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
            args=RewardConfig(**trl_kwargs(spec, paths), max_length=max_len),
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
