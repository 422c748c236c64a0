"""Summarization (any source -> target text task), for both model families.

Design: one task, two backends chosen from the base's config (``is_encoder_decoder``):

* encoder-decoder (T5, BART): AutoModelForSeq2SeqLM, ``prefix + source`` into the encoder,
  target as decoder labels, DataCollatorForSeq2Seq, Seq2SeqTrainer; validation runs with
  ``predict_with_generate`` and picks the checkpoint on ROUGE-L.
* decoder-only (Llama, SmolLM2): the same rows become prompt -> completion SFT. The prompt is
  ``prefix + source`` in the tokenizer's chat template (user turn) when it has one, else
  ``prefix + source + response_marker``; the loss is on the summary tokens only (prompt labels
  are -100). Seq2SeqTrainer trains it too (it is a Trainer); validation uses the loss because a
  causal model's generate() returns prompt + completion, which predict_with_generate cannot
  split.

Both share the data path, the source truncation (the source is cut to ``max_source_tokens`` so the
summary is never truncated away), the final evaluation (one generation loop for base and tuned
model with the same settings: ROUGE-1/2/L/Lsum, held-out loss, side-by-side samples).

Task options (task prefix, target field, lengths, generation) come from the spec's
``task_options`` (``Seq2SeqOptions``). Decoding follows ``eval.generation`` like every generative
task (honed.train.tasks._shared.generation_settings); ``task_options.generation`` adds beams and
n-gram blocking and overrides what it sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from pydantic import Field

from honed.config_base import StrictModel
from honed.data.dataset import SplitData
from honed.evals.generative import GenerationSettings
from honed.train import common
from honed.train.methods import get_method
from honed.train.tasks._shared import (
    base_view,
    generation_settings,
    load_base,
    load_text_rows,
    load_tokenizer,
    load_tuned,
    selection_metric,
    task_options,
)

if TYPE_CHECKING:
    from honed.models.resolve import ResolvedModel
    from honed.paths import RunPaths
    from honed.spec import RunSpec

IGNORE_INDEX = -100  # label id the loss skips (prompt and padding positions)


class GenerationOptions(StrictModel):
    """Decoding settings of the final evaluation (recorded in metrics.json). Unset fields take
    ``eval.generation``'s, and max_new_tokens then this task's default (96)."""

    max_new_tokens: int | None = Field(
        None,
        gt=0,
        description="Tokens generated per summary at most; default: "
        "eval.generation.max_new_tokens when set, else 96.",
    )
    repetition_penalty: float | None = Field(
        None, gt=0, description="Penalty on repeated tokens; default: eval.generation's."
    )
    num_beams: int = Field(1, gt=0, description="Beam width; 1 is greedy decoding.")
    no_repeat_ngram_size: int = Field(
        3, ge=0, description="Forbid repeating n-grams of this size (0: off); small models loop."
    )
    batch_size: int | None = Field(
        None, gt=0, description="Prompts generated together; default: eval.generation's."
    )


class Seq2SeqOptions(StrictModel):
    """Options of the seq2seq task (proposed spec section ``task_options``)."""

    target_field: str = Field("summary", description="Field holding the target text.")
    prefix: str = Field("summarize: ", description="Task prefix put before each source text.")
    response_marker: str = Field(
        "\nSummary: ",
        description="Decoder-only bases without a chat template: text between source and target.",
    )
    max_source_tokens: int | None = Field(
        None, gt=0, description="Source tokens kept (the rest is cut); default: model.max_length."
    )
    max_target_tokens: int = Field(96, gt=0, description="Target tokens kept for training.")
    select_on_rouge: bool = Field(
        True,
        description="Encoder-decoder only: pick the best checkpoint on validation ROUGE-L "
        "(predict_with_generate) instead of validation loss.",
    )
    generation: GenerationOptions = Field(default_factory=GenerationOptions)
    samples: int = Field(3, ge=0, description="Test examples shown base vs tuned in the report.")
    compare_base: bool = Field(True, description="Also score the untuned base (the baseline).")


# --------------------------------------------------------------------------------------------
# Features: token ids per row. Encoder-decoder: input_ids = prefix + source, labels = target.
# Decoder-only: input_ids = prompt + target + eos, labels = -100 over the prompt.


def is_encoder_decoder(path: Any) -> bool:
    from transformers import AutoConfig

    return bool(getattr(AutoConfig.from_pretrained(str(path)), "is_encoder_decoder", False))


def _truncate_source(tokenizer: Any, text: str, max_tokens: int) -> str:
    """The source cut to ``max_tokens`` tokens (as text, so templates can wrap it)."""
    ids = tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True)


def prompt_ids(tokenizer: Any, source: str, opts: Seq2SeqOptions, max_source: int) -> list[int]:
    """Decoder-only prompt token ids: chat template (user turn) when the tokenizer has one."""
    text = opts.prefix + _truncate_source(tokenizer, source, max_source)
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(rendered, add_special_tokens=False)["input_ids"]
    ids = tokenizer(text + opts.response_marker, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return ([bos] if bos is not None else []) + ids


def encoder_ids(tokenizer: Any, source: str, opts: Seq2SeqOptions, max_source: int) -> list[int]:
    enc = tokenizer(opts.prefix + source, truncation=True, max_length=max_source)
    return list(enc["input_ids"])


def features(
    rows: list[dict], tokenizer: Any, opts: Seq2SeqOptions, max_source: int, enc_dec: bool
) -> list[dict[str, list[int]]]:
    """Unpadded training features (the collator pads per batch)."""
    out = []
    for row in rows:
        if enc_dec:
            source = encoder_ids(tokenizer, row["source"], opts, max_source)
            target = tokenizer(
                text_target=row["target"], truncation=True, max_length=opts.max_target_tokens
            )["input_ids"]
            out.append({"input_ids": source, "labels": list(target)})
            continue
        prompt = prompt_ids(tokenizer, row["source"], opts, max_source)
        target = tokenizer(row["target"], add_special_tokens=False)["input_ids"]
        target = [*target[: opts.max_target_tokens - 1], tokenizer.eos_token_id]
        out.append({"input_ids": prompt + target, "labels": [IGNORE_INDEX] * len(prompt) + target})
    for feat in out:
        feat["attention_mask"] = [1] * len(feat["input_ids"])
        feat["length"] = len(feat["input_ids"])  # for group_by_length
    return out


# --------------------------------------------------------------------------------------------
# Models


def auto_class(enc_dec: bool) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if enc_dec else AutoModelForCausalLM


# --------------------------------------------------------------------------------------------
# Final evaluation: rows in honed.evals.generative's {prompt, completion} form, so loss,
# generation and samples are computed exactly as for the sft task.


@dataclass(frozen=True)
class SummarySettings(GenerationSettings):
    """generative.GenerationSettings plus n-gram blocking and beams (small models loop)."""

    no_repeat_ngram_size: int = 3
    num_beams: int = 1

    def generate_kwargs(self) -> dict[str, Any]:
        return {
            **super().generate_kwargs(),
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "num_beams": self.num_beams,
        }


#: Summaries are longer than chat answers: generated tokens when no setting says otherwise.
SUMMARY_MAX_NEW_TOKENS = 96


def summary_settings(opts: Seq2SeqOptions, spec: RunSpec) -> SummarySettings:
    """Decoding settings: eval.generation, under the task's generation options that are set."""
    options = opts.generation.model_dump()
    return cast(
        SummarySettings,
        generation_settings(spec, SUMMARY_MAX_NEW_TOKENS, options, SummarySettings),
    )


def eval_rows(
    rows: list[dict], tokenizer: Any, opts: Seq2SeqOptions, max_source: int, enc_dec: bool
) -> list[dict[str, Any]]:
    """{prompt, completion} rows matching the training format (source already truncated)."""
    out = []
    chat = not enc_dec and bool(getattr(tokenizer, "chat_template", None))
    for row in rows:
        text = opts.prefix + _truncate_source(tokenizer, row["source"], max_source)
        if chat:
            out.append(
                {
                    "prompt": [{"role": "user", "content": text}],
                    "completion": [{"role": "assistant", "content": row["target"]}],
                }
            )
        else:
            marker = "" if enc_dec else opts.response_marker
            out.append({"prompt": text + marker, "completion": row["target"]})
    return out


def _rouge_metrics(tokenizer: Any):
    """compute_metrics for predict_with_generate: token ids -> ROUGE on decoded text."""
    import numpy as np

    from honed.evals.rouge import rouge_scores

    def compute(eval_pred: Any) -> dict[str, float]:
        preds, labels = eval_pred  # (n, gen_len), (n, label_len); -100 marks padding
        preds = np.where(preds < 0, tokenizer.pad_token_id, preds)
        labels = np.where(labels == IGNORE_INDEX, tokenizer.pad_token_id, labels)
        pred_text = tokenizer.batch_decode(preds, skip_special_tokens=True)
        ref_text = tokenizer.batch_decode(labels, skip_special_tokens=True)
        return rouge_scores(pred_text, ref_text)

    return compute


# --------------------------------------------------------------------------------------------


class Seq2SeqTask:
    name = "seq2seq"
    options_model = Seq2SeqOptions  # validates the spec's task_options
    # The adapter is built with CAUSAL_LM instead when the base is decoder-only (see train).
    peft_task_type = "SEQ_2_SEQ_LM"

    def data_fields(self, spec: RunSpec, first_row: Any) -> dict[str, str]:
        opts = task_options(spec, Seq2SeqOptions)
        return {
            spec.data.text_field: "data.text_field",
            opts.target_field: "task_options.target_field",
        }

    def prepare_data(self, spec: RunSpec) -> SplitData:
        opts = task_options(spec, Seq2SeqOptions)
        fields = {"source": spec.data.text_field, "target": opts.target_field}
        return load_text_rows(spec, fields, key=lambda r: r["source"])

    def generation(self, spec: RunSpec) -> SummarySettings:
        """Decoding settings of the evaluation (eval.generation under task_options.generation)."""
        return summary_settings(task_options(spec, Seq2SeqOptions), spec)

    def load_trained(self, spec: RunSpec, base: ResolvedModel, paths: RunPaths) -> Any:
        """The model saved in the run folder, as the evaluation loads it."""
        return load_tuned(spec, base, paths.model_dir, auto_class(is_encoder_decoder(base.path)))

    def _max_source(self, spec: RunSpec, opts: Seq2SeqOptions) -> int:
        return opts.max_source_tokens or spec.model.max_length

    def train(
        self, spec: RunSpec, data: SplitData, base: ResolvedModel, paths: RunPaths, resume: bool
    ) -> dict[str, Any]:
        from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer

        from honed.train.losses import with_chunked_loss

        common.setup_runtime(spec.training)
        opts = task_options(spec, Seq2SeqOptions)
        enc_dec = is_encoder_decoder(base.path)
        tokenizer = load_tokenizer(base.path)
        tokenizer.padding_side = "right"  # training: positions must start at 0 on every row
        model = get_method(spec.method.name).prepare(
            load_base(spec, base, auto_class(enc_dec)),
            spec.method,
            "SEQ_2_SEQ_LM" if enc_dec else "CAUSAL_LM",
        )
        max_source = self._max_source(spec, opts)
        by_rouge = enc_dec and opts.select_on_rouge
        # Decoder-only: the loss on the summary tokens only, in chunks (honed.train.losses).
        trainer_cls = (
            Seq2SeqTrainer if enc_dec else with_chunked_loss(Seq2SeqTrainer, spec.training)
        )
        trainer = trainer_cls(
            model=model,
            args=_training_args(spec, opts, paths, by_rouge),
            train_dataset=_dataset(features(data.train, tokenizer, opts, max_source, enc_dec)),
            eval_dataset=_dataset(features(data.validation, tokenizer, opts, max_source, enc_dec)),
            processing_class=tokenizer,
            # Pads input_ids with the pad id and labels with -100, per batch.
            data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
            compute_metrics=_rouge_metrics(tokenizer) if by_rouge else None,
            callbacks=common.callbacks(spec.training),
        )
        metrics = common.train_and_save(trainer, tokenizer, paths, resume)
        metrics["architecture"] = "encoder-decoder" if enc_dec else "decoder-only"
        return metrics

    def evaluate(
        self, spec: RunSpec, data: SplitData, base: ResolvedModel, paths: RunPaths
    ) -> dict[str, Any]:
        from honed.evals import generative

        opts = task_options(spec, Seq2SeqOptions)
        enc_dec = is_encoder_decoder(base.path)
        tokenizer = load_tokenizer(paths.model_dir)
        rows = eval_rows(data.test, tokenizer, opts, self._max_source(spec, opts), enc_dec)
        settings = self.generation(spec)
        tuned_model = self.load_trained(spec, base, paths)
        tuned = _score(tuned_model, tokenizer, rows, settings, spec, opts)
        report: dict[str, Any] = {
            **{f"test_{k}": v for k, v in tuned["scores"].items()},
            "test": {**tuned["scores"], "rows": len(rows)},
            "generation": settings.to_dict(),
            "task_options": opts.model_dump(),
        }
        outputs = {"tuned": tuned["predictions"]}
        if opts.compare_base:
            with base_view(spec, base, tuned_model, auto_class(enc_dec)) as base_model:
                untuned = _score(base_model, tokenizer, rows, settings, spec, opts)
            report["baselines"] = {"base_model": untuned["scores"]}
            outputs = {"base": untuned["predictions"], **outputs}
            if untuned["scores"]["rougeL"] > 0:
                ratio = tuned["scores"]["rougeL"] / untuned["scores"]["rougeL"]
                report["test_rougeL_vs_base"] = ratio
        shown = {name: texts[: opts.samples] for name, texts in outputs.items()}
        samples = generative.side_by_side(rows[: opts.samples], shown)
        report["samples"] = generative.write_samples(samples, paths.root, settings, spec.name)
        return report


def _training_args(spec: RunSpec, opts: Seq2SeqOptions, paths: RunPaths, by_rouge: bool) -> Any:
    """Seq2SeqTrainingArguments; with ``by_rouge``, validation generates with the evaluation's
    decoding settings and ROUGE-L picks the checkpoint."""
    from transformers import Seq2SeqTrainingArguments

    metric, greater = selection_metric(spec, "rougeL" if by_rouge else "loss", greater=by_rouge)
    kwargs = common.training_arguments_kwargs(spec.training, paths)
    kwargs.update(metric_for_best_model=metric, greater_is_better=greater)
    settings = summary_settings(opts, spec)
    return Seq2SeqTrainingArguments(
        **kwargs,
        predict_with_generate=by_rouge,
        generation_max_length=settings.max_new_tokens if by_rouge else None,
        generation_num_beams=settings.num_beams if by_rouge else None,
    )


def _score(
    model: Any,
    tokenizer: Any,
    rows: list[dict],
    settings: Any,
    spec: RunSpec,
    opts: Seq2SeqOptions,
) -> dict[str, Any]:
    """ROUGE of generated summaries and held-out loss/perplexity of the references."""
    from honed.evals import generative
    from honed.evals.rouge import rouge_scores

    refs = [
        r["completion"] if isinstance(r["completion"], str) else r["completion"][0]["content"]
        for r in rows
    ]
    # Room for the template's tokens around the truncated source and the target.
    max_len = (opts.max_source_tokens or spec.model.max_length) + opts.max_target_tokens + 64
    loss = generative.completion_loss(
        model, tokenizer, rows, batch_size=settings.batch_size, max_length=max_len
    )
    preds = generative.generate(model, tokenizer, [r["prompt"] for r in rows], settings)
    scores = {**rouge_scores(preds, refs), "loss": loss["loss"], "perplexity": loss["perplexity"]}
    scores["mean_prediction_words"] = sum(len(p.split()) for p in preds) / max(len(preds), 1)
    return {"scores": scores, "predictions": preds}


def _dataset(feats: list[dict]) -> Any:
    import datasets

    return datasets.Dataset.from_list(feats)


TASK = Seq2SeqTask()
