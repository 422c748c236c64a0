"""Supervised fine-tuning of a causal LM on chat data, with TRL's SFTTrainer.

Rows come in one of three shapes, detected from the first row's fields:

- ``messages``: ``[{"role": "system"|"user"|"assistant", "content": ...}, ...]`` ending with
  an assistant turn;
- alpaca: ``instruction`` (+ optional ``input``) and ``output``;
- ``prompt`` / ``completion`` text.

Every row becomes a conversational prompt/completion pair (prompt: the turns before the last
assistant turn; completion: that turn), rendered with the tokenizer's chat template, and the
loss covers the completion tokens only (TRL's ``completion_only_loss``; the template's
end-of-turn token is part of the completion, so the model learns to stop). This works with any
prefix-preserving chat template, whereas TRL's ``assistant_only_loss`` needs
``{% generation %}`` markers that e.g. SmolLM2's template lacks. Earlier assistant turns of a
multi-turn conversation are context, not targets. Training steps compute the loss on the
supervised tokens only, 512 at a time (``honed.train.losses``; ``training.chunked_lm_loss``), so
the (batch, seq, 49k-vocabulary) float32 logits never exist; `bench/train_memory.py` measures
it against full logits and TRL's fused head.

With ``training.packing`` on (the default on CUDA; on CPU length-grouped padded batches are
faster), sequences are packed best-fit-decreasing into rows of ``model.max_length`` tokens
without padding; each token keeps its own sequence's ``position_ids``, and with the KV cache off
transformers builds a block-diagonal causal mask from them, so packed samples never attend to
each other (checked in tests/unit/train/test_sft.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from honed.data.dataset import SplitData
from honed.data.loaders import BadRow, RawData
from honed.errors import DataError
from honed.evals import generative
from honed.train import common
from honed.train.methods import get_method
from honed.train.tasks._shared import (
    DEFAULT_CHAT_TEMPLATE,
    base_view,
    dedup_first,
    generation_settings,
    load_base,
    load_tokenizer,
    load_tuned,
    read_text_sources,
    split_text_rows,
)

if TYPE_CHECKING:
    from honed.models.resolve import ResolvedModel
    from honed.paths import RunPaths
    from honed.spec import RunSpec

CHAT_FORMATS = ("messages", "alpaca", "prompt_completion")
#: The fields each chat format needs in every row.
CHAT_FIELDS = {
    "messages": ("messages",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
}
ROLES = ("system", "user", "assistant")
#: Test rows scored for loss/perplexity and rows shown side by side (CPU time bounds).
MAX_EVAL_ROWS = 200
SAMPLE_ROWS = 8


# ---------------------------------------------------------------- data


def detect_chat_format(fields: Mapping[str, Any], requested: str = "auto") -> str:
    """Which of CHAT_FORMATS a row is in; a clear error naming the fields otherwise."""
    if requested != "auto":
        return requested
    if "messages" in fields:
        return "messages"
    if "instruction" in fields and "output" in fields:
        return "alpaca"
    if "prompt" in fields and "completion" in fields:
        return "prompt_completion"
    raise DataError(
        f"sft: cannot tell the chat format from the fields {sorted(fields)}; expected "
        "'messages', 'instruction'+'output' (alpaca) or 'prompt'+'completion'"
    )


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _check_messages(messages: Any) -> str | None:
    """Why a messages list is unusable, or None when it is fine."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or msg.get("role") not in ROLES:
            return f"message {i}: needs a role in {ROLES}"
        if not isinstance(msg.get("content"), str):
            return f"message {i}: content must be text"
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        return "the last message must be a non-empty assistant turn"
    if not any(m["role"] == "user" for m in messages[:-1]):
        return "no user turn before the last assistant turn"
    return None


def to_chat(fields: Mapping[str, Any], fmt: str) -> tuple[dict[str, Any] | None, str | None]:
    """(conversational {"prompt", "completion"} row, None) or (None, why the row is bad)."""
    if fmt == "messages":
        messages = fields.get("messages")
        problem = _check_messages(messages)
        if problem:
            return None, problem
        clean = [{"role": m["role"], "content": m["content"]} for m in messages]
        return {"prompt": clean[:-1], "completion": clean[-1:]}, None
    if fmt == "alpaca":
        instruction, extra, output = (
            _text(fields.get(k)) for k in ("instruction", "input", "output")
        )
        user = f"{instruction}\n\n{extra}" if extra else instruction
    else:
        user, output = _text(fields.get("prompt")), _text(fields.get("completion"))
    if not user or not output:
        return None, f"empty prompt or answer ({fmt} format)"
    return {
        "prompt": [{"role": "user", "content": user}],
        "completion": [{"role": "assistant", "content": output}],
    }, None


def chat_rows(raw: RawData, requested: str = "auto") -> tuple[list[dict], list[BadRow], str]:
    """Convert records into chat rows; returns rows, bad rows and the detected format."""
    if not raw.records:
        raise DataError("sft: the data source holds no rows")
    fmt = detect_chat_format(raw.records[0].fields, requested)
    rows: list[dict] = []
    bad = list(raw.bad_rows)
    for rec in raw.records:
        row, problem = to_chat(rec.fields, fmt)
        if row is None:
            bad.append(BadRow(rec.file, rec.line, problem or "bad row"))
        else:
            rows.append({**row, "line": rec.line})
    return rows, bad, fmt


def _row_key(row: Mapping[str, Any]) -> str:
    return json.dumps([row["prompt"], row["completion"]], sort_keys=True)


def _prompt_key(row: Mapping[str, Any]) -> str:
    return "\n".join(m["content"] for m in row["prompt"] if m["role"] != "system")


def load_chat_data(spec: RunSpec) -> SplitData:
    """Load, convert, deduplicate, split (not stratified) and leak-check chat rows."""
    formats: list[str] = []

    def parse(raw: RawData, src: Any) -> tuple[list[dict], list[BadRow]]:
        rows, bad, fmt = chat_rows(raw, getattr(src.cfg, "chat_format", "auto"))
        formats.append(fmt)
        return rows, bad

    read = read_text_sources(spec, parse)
    dups = dedup_first(read, _row_key) if spec.data.dedup else 0
    if len(read.rows) < 5:
        raise DataError(
            f"{read.label}: {len(read.rows)} usable row(s); sft needs at least 5 to split"
        )
    lengths = {"prompt": _prompt_key, "completion": lambda r: r["completion"][0]["content"]}
    fmt = formats[0] if len(set(formats)) == 1 else formats
    return split_text_rows(read, spec, dups, _prompt_key, lengths, chat_format=fmt)


# ---------------------------------------------------------------- models


def chat_tokenizer(path: Any) -> Any:
    """The tokenizer with a pad token and a chat template (ChatML when it has none)."""
    return load_tokenizer(path, DEFAULT_CHAT_TEMPLATE)


def sft_config_kwargs(spec: RunSpec, paths: RunPaths) -> dict[str, Any]:
    """SFTConfig arguments: the shared training arguments plus SFT's own."""
    method = get_method(spec.method.name)
    kwargs = common.training_arguments_kwargs(spec.training, paths)
    packing = use_packing(spec.training.packing)
    kwargs.update(
        # Validation loss picks the best checkpoint and drives early stopping.
        metric_for_best_model="loss",
        greater_is_better=False,
        # Packed rows have no per-example length for group_by_length to sort on.
        train_sampling_strategy="random" if packing else kwargs["train_sampling_strategy"],
        max_length=spec.model.max_length,
        packing=packing,
        packing_strategy="bfd",  # best-fit decreasing; implies padding-free batches
        completion_only_loss=True,
        # SFTConfig turns it on by default; honed leaves it to the spec (on CPU it only costs).
        activation_checkpointing=bool(spec.training.gradient_checkpointing),
        dataset_num_proc=None,
        optim=method.optim() if hasattr(method, "optim") else "adamw_torch",
    )
    return kwargs


def use_packing(setting: bool | str) -> bool:
    """``training.packing``; 'auto' packs only on CUDA (see TrainingConfig.packing)."""
    if setting == "auto":
        import torch

        return torch.cuda.is_available()
    return bool(setting)


def trainer_class(spec: RunSpec) -> type:
    """SFTTrainer, with the chunked supervised-token loss unless the spec turns it off."""
    from trl import SFTTrainer

    from honed.train.losses import with_chunked_loss

    return with_chunked_loss(SFTTrainer, spec.training)


def _dataset(rows: list[dict]) -> Any:
    import datasets

    return datasets.Dataset.from_list(
        [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    )


# ---------------------------------------------------------------- task


class SftTask:
    name = "sft"
    peft_task_type = "CAUSAL_LM"

    def prepare_data(self, spec: RunSpec) -> SplitData:
        return load_chat_data(spec)

    def generation(self, spec: RunSpec) -> generative.GenerationSettings:
        """Decoding settings of the evaluation samples (eval.generation; see _shared)."""
        return generation_settings(spec)

    def load_trained(self, spec: RunSpec, base: ResolvedModel, paths: RunPaths) -> Any:
        """The model saved in the run folder, as the evaluation loads it."""
        return load_tuned(spec, base, paths.model_dir)

    def data_fields(self, spec: RunSpec, first_row: Mapping[str, Any]) -> dict[str, str]:
        fmt = detect_chat_format(first_row, spec.data.chat_format)
        return dict.fromkeys(CHAT_FIELDS[fmt], "data.chat_format")

    def load_model(self, spec: RunSpec, base: ResolvedModel) -> Any:
        """The base, wrapped or frozen by the method, ready to train."""
        model = load_base(spec, base)
        # No KV cache while training: with a cache transformers ignores the packed
        # sequences' position_ids when masking, and samples would attend to each other.
        model.config.use_cache = False
        return get_method(spec.method.name).prepare(model, spec.method, self.peft_task_type)

    def build_trainer(
        self, spec: RunSpec, data: SplitData, base: ResolvedModel, paths: RunPaths
    ) -> tuple[Any, Any]:
        """(SFTTrainer, tokenizer); separate from ``train`` so benchmarks reuse it."""
        from trl import SFTConfig

        tokenizer = chat_tokenizer(base.path)
        trainer = trainer_class(spec)(
            model=self.load_model(spec, base),
            args=SFTConfig(**sft_config_kwargs(spec, paths)),
            train_dataset=_dataset(data.train),
            eval_dataset=_dataset(data.validation),
            processing_class=tokenizer,
            callbacks=common.callbacks(spec.training),
        )
        return trainer, tokenizer

    def train(
        self, spec: RunSpec, data: SplitData, base: ResolvedModel, paths: RunPaths, resume: bool
    ) -> dict[str, Any]:
        common.setup_runtime(spec.training)
        trainer, tokenizer = self.build_trainer(spec, data, base, paths)
        return common.train_and_save(trainer, tokenizer, paths, resume)

    def evaluate(
        self, spec: RunSpec, data: SplitData, base: ResolvedModel, paths: RunPaths
    ) -> dict[str, Any]:
        common.setup_runtime(spec.training)
        tokenizer = chat_tokenizer(paths.model_dir)
        tuned = self.load_trained(spec, base, paths)
        rows, shown = data.test[:MAX_EVAL_ROWS], data.test[:SAMPLE_ROWS]
        settings = self.generation(spec)
        score = _scorer(tokenizer, spec, rows)
        after, tuned_texts = score(tuned), _generate(tuned, tokenizer, shown, settings)
        with base_view(spec, base, tuned) as base_model:
            before, base_texts = (
                score(base_model),
                _generate(base_model, tokenizer, shown, settings),
            )
        samples = generative.side_by_side(shown, {"base": base_texts, "tuned": tuned_texts})
        files = generative.write_samples(samples, paths.root, settings, spec.name)
        report: dict[str, Any] = {
            "test_loss": after["loss"],
            "test_perplexity": after["perplexity"],
            "test_base_loss": before["loss"],
            "test_base_perplexity": before["perplexity"],
            "test": {"tuned": after, "base": before},
            "samples": {"generation": settings.to_dict(), "rows": len(samples), "files": files},
        }
        report.update(_format_metrics(spec, tokenizer, tuned, rows, settings))
        return report


def _scorer(tokenizer: Any, spec: RunSpec, rows: list):
    """Held-out completion loss of a model on ``rows`` (test rows)."""

    def score(model: Any) -> dict[str, float]:
        return generative.completion_loss(
            model, tokenizer, rows, spec.training.eval_batch_size, spec.model.max_length
        )

    return score


def _generate(model: Any, tokenizer: Any, rows: list, settings: Any) -> list[str]:
    return generative.generate(model, tokenizer, [r["prompt"] for r in rows], settings)


def _format_metrics(
    spec: RunSpec, tokenizer: Any, tuned: Any, rows: list, settings: Any
) -> dict[str, Any]:
    """Format adherence of generated answers, when the spec declares a format (proposed
    eval.format / eval.format_regex fields)."""
    kind = getattr(spec.eval, "format", None)
    if not kind:
        return {}
    texts = _generate(tuned, tokenizer, rows, settings)
    result = generative.format_adherence(texts, kind, getattr(spec.eval, "format_regex", None))
    return {"test_format_adherence": result["rate"], "format_adherence": result}


TASK = SftTask()
