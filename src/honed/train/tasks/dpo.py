"""Direct Preference Optimization (TRL's DPOTrainer) on prompt / chosen / rejected pairs.

The reference model is what the implicit reward is measured against:

* full fine-tuning: a frozen deep copy of the base, taken before training (``ref_model``);
* LoRA / QLoRA: no copy at all. The adapter starts at zero (LoRA's B = 0), so the base with the
  adapter disabled *is* the reference; TRL computes reference log-probs under
  ``disable_adapter()``. (TRL copies an adapter passed already wrapped into a second "ref"
  adapter; we delete that copy, it would be identical to the disabled state.)

Prompts are cut from the left to ``max_prompt_tokens`` (the last turns matter; TRL's own
truncation keeps the start and would cut the answers off long prompts).

Evaluation on the held-out pairs: reward accuracy (share of pairs whose implicit reward
beta * (log pi(y|x) - log pi_ref(y|x)) is higher for the chosen answer) and the mean margin, plus
the base model's own preference (summed log-likelihood of chosen vs rejected) as a baseline.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from honed.data.dataset import SplitData
from honed.evals import generative
from honed.train import common
from honed.train.methods import get_method
from honed.train.tasks._preference import (
    PreferenceOptions,
    fit_prompt,
    preference_fields,
    preference_rows,
    prompt_budget,
    trl_kwargs,
)
from honed.train.tasks._shared import (
    base_view,
    drop_reference_adapter,
    generation_settings,
    load_base,
    load_tokenizer,
    load_tuned,
    task_options,
)

if TYPE_CHECKING:
    from honed.models.resolve import ResolvedModel
    from honed.paths import RunPaths
    from honed.spec import RunSpec

#: Side-by-side samples are short by default (a CPU budget); eval.generation overrides it.
SAMPLE_MAX_NEW_TOKENS = 48


def fitted_rows(rows: list[dict], tokenizer: Any, budget: int) -> list[dict]:
    """Rows with each prompt cut to its last ``budget`` tokens."""
    return [
        {
            "prompt": fit_prompt(tokenizer, r["prompt"], budget),
            "chosen": r["chosen"],
            "rejected": r["rejected"],
        }
        for r in rows
    ]


# --------------------------------------------------------------------------------------------
# Scoring held-out pairs


def completion_ids(
    tokenizer: Any, prompt: str, completion: str, max_length: int
) -> tuple[list[int], int]:
    """(prompt + completion + eos ids cut to max_length, index where the completion starts).

    Like TRL, the completion starts where the tokenized prompt and prompt+completion diverge.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    full = [*full, tokenizer.eos_token_id]
    start = 0
    while start < min(len(prompt_ids), len(full)) and prompt_ids[start] == full[start]:
        start += 1
    return full[:max_length], min(start, max_length)


def sequence_logps(
    model: Any, tokenizer: Any, pairs: list[tuple[str, str]], max_length: int, batch_size: int
) -> list[float]:
    """Summed log-probability of each completion given its prompt: [(prompt, completion)]."""
    import torch

    model.eval()
    out: list[float] = []
    for start in range(0, len(pairs), batch_size):
        encoded = [
            completion_ids(tokenizer, p, c, max_length)
            for p, c in pairs[start : start + batch_size]
        ]
        width = max(len(ids) for ids, _ in encoded)
        ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        scored = torch.zeros((len(encoded), width), dtype=torch.bool)  # completion tokens
        for row, (seq, begin) in enumerate(encoded):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            scored[row, begin : len(seq)] = True
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V)
        # Token t is predicted by position t - 1.
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        token_logp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T - 1)
        out.extend((token_logp * scored[:, 1:]).sum(-1).tolist())
    return out


def pair_logps(
    model: Any, tokenizer: Any, rows: list[dict], max_length: int, batch_size: int
) -> tuple[list[float], list[float]]:
    chosen = sequence_logps(
        model, tokenizer, [(r["prompt"], r["chosen"]) for r in rows], max_length, batch_size
    )
    rejected = sequence_logps(
        model, tokenizer, [(r["prompt"], r["rejected"]) for r in rows], max_length, batch_size
    )
    return chosen, rejected


def reward_metrics(
    policy: tuple[list[float], list[float]],
    reference: tuple[list[float], list[float]],
    beta: float,
) -> dict[str, float]:
    """DPO implicit-reward accuracy and margins from summed log-probs."""
    import numpy as np

    pol_c, pol_r = (np.array(x) for x in policy)
    ref_c, ref_r = (np.array(x) for x in reference)
    r_chosen = beta * (pol_c - ref_c)
    r_rejected = beta * (pol_r - ref_r)
    margins = r_chosen - r_rejected
    return {
        "reward_accuracy": float((margins > 0).mean()),
        "reward_margin_mean": float(margins.mean()),
        "reward_margin_median": float(np.median(margins)),
        "reward_chosen_mean": float(r_chosen.mean()),
        "reward_rejected_mean": float(r_rejected.mean()),
    }


# --------------------------------------------------------------------------------------------


class DpoTask:
    name = "dpo"
    options_model = PreferenceOptions  # validates the spec's task_options
    peft_task_type = "CAUSAL_LM"

    data_fields = staticmethod(preference_fields)

    def prepare_data(self, spec: RunSpec) -> SplitData:
        return preference_rows(spec)

    def generation(self, spec: RunSpec) -> generative.GenerationSettings:
        """Decoding settings of the evaluation samples (eval.generation; see _shared)."""
        return generation_settings(spec, SAMPLE_MAX_NEW_TOKENS)

    def load_trained(self, spec: RunSpec, base: ResolvedModel, paths: RunPaths) -> Any:
        """The model saved in the run folder, as the evaluation loads it."""
        return load_tuned(spec, base, paths.model_dir)

    def train(
        self, spec: RunSpec, data: SplitData, base: ResolvedModel, paths: RunPaths, resume: bool
    ) -> dict[str, Any]:
        import datasets
        from trl import DPOConfig, DPOTrainer

        common.setup_runtime(spec.training)
        opts = task_options(spec, PreferenceOptions)
        method = get_method(spec.method.name)
        tokenizer = load_tokenizer(base.path)
        model = load_base(spec, base)
        ref_model = None
        if not method.is_adapter:
            # Full fine-tuning changes every weight: keep a frozen copy as the reference.
            ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        model = method.prepare(model, spec.method, self.peft_task_type)
        budget = prompt_budget(opts, spec.model.max_length)
        trainer = DPOTrainer(
            model=model,
            ref_model=ref_model,
            args=DPOConfig(
                **trl_kwargs(spec, paths), beta=opts.beta, max_length=spec.model.max_length
            ),
            train_dataset=datasets.Dataset.from_list(fitted_rows(data.train, tokenizer, budget)),
            eval_dataset=datasets.Dataset.from_list(
                fitted_rows(data.validation, tokenizer, budget)
            ),
            processing_class=tokenizer,
            callbacks=common.callbacks(spec.training),
        )
        drop_reference_adapter(trainer.model)
        metrics = common.train_and_save(trainer, tokenizer, paths, resume)
        metrics["reference_model"] = "frozen copy" if ref_model is not None else "adapter disabled"
        return metrics

    def evaluate(
        self, spec: RunSpec, data: SplitData, base: ResolvedModel, paths: RunPaths
    ) -> dict[str, Any]:
        opts = task_options(spec, PreferenceOptions)
        settings = self.generation(spec)
        tokenizer = load_tokenizer(paths.model_dir)
        rows = fitted_rows(data.test, tokenizer, prompt_budget(opts, spec.model.max_length))
        max_len, batch = spec.model.max_length, opts.eval_batch_size
        shown = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows[: opts.samples]]
        tuned = self.load_trained(spec, base, paths)
        policy = pair_logps(tuned, tokenizer, rows, max_len, batch)
        outputs = {"tuned": _generate(tuned, tokenizer, shown, settings)}
        # The reference DPO trained against: adapter disabled, or the base loaded from disk.
        with base_view(spec, base, tuned) as reference_model:
            reference = pair_logps(reference_model, tokenizer, rows, max_len, batch)
            outputs = {"base": _generate(reference_model, tokenizer, shown, settings), **outputs}
        scores = reward_metrics(policy, reference, opts.beta)
        base_pref = sum(c > r for c, r in zip(*reference, strict=True)) / max(len(rows), 1)
        report: dict[str, Any] = {
            **{f"test_{k}": v for k, v in scores.items()},
            "test": {**scores, "rows": len(rows), "beta": opts.beta},
            "baselines": {"base_likelihood_preference_accuracy": base_pref},
            "task_options": opts.model_dump(),
        }
        if shown:
            samples = generative.side_by_side(shown, outputs)
            report["samples"] = generative.write_samples(samples, paths.root, settings, spec.name)
            report["generation"] = settings.to_dict()
        return report


def _generate(model: Any, tokenizer: Any, rows: list[dict], settings: Any) -> list[str]:
    if not rows:
        return []
    return generative.generate(model, tokenizer, [r["prompt"] for r in rows], settings)


TASK = DpoTask()
