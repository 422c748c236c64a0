"""Helpers the language-model tasks (sft, seq2seq, dpo, reward) share, one implementation each:
task options, text rows, the tokenizer, loading the base and the trained model, the untuned base
next to the tuned one, and the decoding settings of the final evaluation.

The leading underscore keeps this module out of task discovery (``honed.plugins.module_names``):
it is not a task, and task modules import from here, never from each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from honed.data.dataset import (
    SplitData,
    apply_bad_row_policy,
    length_stats,
    remove_leaks,
    split_rows,
)
from honed.data.loaders import BadRow, RawData
from honed.data.sources import Parse, SourceRead, read_sources, resolve_sources
from honed.errors import DataError, SpecError
from honed.evals.generative import GenerationSettings
from honed.models.resolve import load_kwargs
from honed.train.methods import get_method

if TYPE_CHECKING:
    from pathlib import Path

    from honed.config_base import StrictModel
    from honed.models.resolve import ResolvedModel
    from honed.spec import RunSpec

#: Tokens generated per evaluation sample when neither the spec nor the task says otherwise.
DEFAULT_MAX_NEW_TOKENS = 64
#: ChatML, used when a tokenizer has no chat template of its own (sft, grpo).
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# --------------------------------------------------------------------------------------------
# Options


def task_options(spec: RunSpec, model_cls: type[StrictModel]) -> Any:
    """The task's options from the spec's ``task_options`` mapping (defaults when absent)."""
    raw = getattr(spec, "task_options", None) or {}
    try:
        return model_cls.model_validate(raw)
    except Exception as err:  # pydantic ValidationError: name the section in the message
        raise SpecError(f"task_options for task {spec.task!r}: {err}") from None


def selection_metric(spec: RunSpec, default: str, greater: bool) -> tuple[str, bool]:
    """The spec's validation metric, unless it is left at the classification default."""
    cfg = spec.training
    if cfg.metric_for_best_model == "macro_f1":
        return default, greater
    return cfg.metric_for_best_model, cfg.greater_is_better


def generation_settings(
    spec: RunSpec,
    default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    options: Mapping[str, Any] | None = None,
    settings_cls: type[GenerationSettings] = GenerationSettings,
) -> GenerationSettings:
    """Decoding settings of the final evaluation, the same rule for every task.

    ``eval.generation`` gives the settings; ``max_new_tokens`` left unset there takes the task's
    default (summaries are longer than chat answers). ``options`` are the task's own decoding
    options (``task_options.generation``): those that are set win, being the more specific.
    """
    given = getattr(getattr(spec, "eval", None), "generation", None)
    values = given.model_dump() if given is not None else {}
    values = {k: v for k, v in values.items() if v is not None}
    values.setdefault("max_new_tokens", default_max_new_tokens)
    values.update({k: v for k, v in (options or {}).items() if v is not None})
    return settings_cls(**values)


# --------------------------------------------------------------------------------------------
# Data: text fields -> rows, bad rows reported with file:line, dedup, split, leakage, report.

RowCheck = Callable[[dict[str, Any]], str | None]


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value if isinstance(value, str) else str(value)


def _parse_rows(raw: RawData, fields: dict[str, str], check: RowCheck | None):
    rows: list[dict[str, Any]] = []
    bad = list(raw.bad_rows)
    for rec in raw.records:
        row: dict[str, Any] = {"line": rec.line}
        for column, field in fields.items():
            value = _text(rec.fields.get(field))
            if value is None or not value.strip():
                bad.append(BadRow(rec.file, rec.line, f"empty or missing field {field!r}"))
                break
            row[column] = value
        else:
            problem = check(row) if check else None
            if problem:
                bad.append(BadRow(rec.file, rec.line, problem))
            else:
                rows.append(row)
    return rows, bad


def read_text_sources(spec: RunSpec, parse: Parse) -> SourceRead:
    """Every source of the spec read with ``parse`` (rows keep their provenance), the bad-row
    policy applied. Feedback sources are refused: overriding a label by a correction is the
    classification task's; other tasks add such rows with ``kind: data``."""
    sources = resolve_sources(spec.data, spec.base_dir)
    for src in sources:
        if src.kind == "feedback":
            raise SpecError(
                f"{src.setting}.kind: 'feedback' (corrections overriding labels) is supported "
                f"by the classification task only; for task {spec.task!r} add the file with "
                "kind: data"
            )
    read = read_sources(sources, parse)
    apply_bad_row_policy(read.bad, spec.data, read.label)
    return read


def dedup_first(read: SourceRead, key: Callable[[dict[str, Any]], str]) -> int:
    """Drop rows whose ``key`` an earlier row has (in place, counted per source)."""
    seen: dict[str, dict[str, Any]] = {}
    for row in read.rows:
        if seen.setdefault(key(row), row) is not row:
            read.tallies[row["origin"]].lost["duplicate"] += 1
    dups = len(read.rows) - len(seen)
    read.rows = list(seen.values())
    return dups


def load_text_rows(
    spec: RunSpec,
    fields: dict[str, str],
    key: Callable[[dict[str, Any]], str],
    leak_key: Callable[[dict[str, Any]], str] | None = None,
    check: RowCheck | None = None,
) -> SplitData:
    """Rows with one text column per ``fields`` entry ({column: source field}).

    A row is bad when a field is missing or blank or ``check`` names a problem; the spec's
    on_bad_rows policy then skips or fails. Exact duplicates (same ``key``) are dropped, splits
    are random (nothing to stratify on), and train/validation rows whose normalised
    ``leak_key`` (default ``key``) occurs in test are removed.
    """
    read = read_text_sources(spec, lambda raw, src: _parse_rows(raw, fields, check))
    dups = dedup_first(read, key) if spec.data.dedup else 0
    if len(read.rows) < 3:
        raise DataError(f"{read.label}: {len(read.rows)} usable row(s); need at least 3 to split")
    lengths = {column: (lambda r, c=column: r[c]) for column in fields}
    return split_text_rows(read, spec, dups, leak_key or key, lengths, fields=fields)


def split_text_rows(
    read: SourceRead,
    spec: RunSpec,
    dups: int,
    leak_key: Callable[[dict[str, Any]], str],
    lengths: dict[str, Callable[[dict[str, Any]], str]],
    **described: Any,
) -> SplitData:
    """Random (unstratified) train/validation/test split of ``read.rows``, leak check on
    ``leak_key``, and the data report: counts (also per source), bad rows, duplicates, leaks,
    text lengths (``lengths``: column -> text of a row) and whatever ``described`` adds (the
    fields, the chat format)."""
    cfg = spec.data
    train, validation, test = split_rows(read.rows, cfg.split, stratify_key=None)
    before = train + validation
    leaks = remove_leaks(train, validation, test, key=leak_key)
    after = {id(r) for r in train + validation}
    for row in before:
        if id(row) not in after:
            read.tallies[row["origin"]].lost["leaked_test"] += 1
    read.count_kept([train, validation, test])
    data = SplitData(train, validation, test, source_sha256=read.sha256)
    kept = train + validation + test
    data.report = {
        "source": read.sources[0].path,
        "source_sha256": read.sha256,
        **described,
        "rows_read": read.rows_read,
        "rows": {name: len(data.split(name)) for name in ("train", "validation", "test")},
        "bad_rows": [str(b) for b in read.bad],
        "duplicates_removed": dups,
        "leakage_removed": leaks,
        "sources": read.report(),
        "length": {
            column: length_stats([text(r) for r in kept]) for column, text in lengths.items()
        },
        "split": cfg.split.model_dump(),
        "content_sha256": data.content_sha256,
    }
    return data


# --------------------------------------------------------------------------------------------
# Models


def load_tokenizer(path: Any, default_chat_template: str | None = None) -> Any:
    """The tokenizer with a pad token (EOS when it has none: Llama-style tokenizers ship
    without one) and, when given, a chat template for tokenizers that have none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if default_chat_template and not tokenizer.chat_template:
        tokenizer.chat_template = default_chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _auto(auto_cls: Any) -> Any:
    if auto_cls is not None:
        return auto_cls
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def load_base(spec: RunSpec, base: ResolvedModel, auto_cls: Any = None) -> Any:
    """The base (a causal LM unless ``auto_cls`` says otherwise) loaded as the method wants it,
    e.g. 4-bit for QLoRA, not yet wrapped.

    A 4-bit base gets bitsandbytes' CPU repacking turned off at once (honed.models.quantize):
    evaluation and generation then run the kernels training used, whichever task loads it.
    """
    method = get_method(spec.method.name)
    model = _auto(auto_cls).from_pretrained(
        str(base.path), **load_kwargs(spec.model), **method.load_kwargs(spec.method)
    )
    return keep_training_kernels(model, method)


def keep_training_kernels(model: Any, method: Any) -> Any:
    """A base loaded in 4-bit for ``method`` with bitsandbytes' CPU repacking off, so that
    evaluation runs the kernels training used (see honed.models.quantize)."""
    if getattr(method, "quantized_base", False):
        from honed.models.quantize import disable_cpu_repack

        disable_cpu_repack(model)
    return model


def load_tuned(spec: RunSpec, base: ResolvedModel, folder: Path, auto_cls: Any = None) -> Any:
    """The trained model saved in ``folder``: base + adapter, or the full weights."""
    method = get_method(spec.method.name)
    if not method.is_adapter:
        model = _auto(auto_cls).from_pretrained(str(folder), **load_kwargs(spec.model))
        model.config.use_cache = True  # saved off by sft (training); generation wants it
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base(spec, base, auto_cls), str(folder))


@contextmanager
def base_view(
    spec: RunSpec, base: ResolvedModel, tuned: Any, auto_cls: Any = None
) -> Iterator[Any]:
    """The untuned base next to the tuned model: the adapter switched off when there is one
    (no second copy in memory), else the base loaded from disk."""
    if hasattr(tuned, "disable_adapter"):
        with tuned.disable_adapter():
            yield tuned
    else:
        yield load_base(spec, base, auto_cls)


def drop_reference_adapter(model: Any) -> None:
    """Delete the "ref" copy TRL's preference/RL trainers make of a fresh adapter passed already
    wrapped: it is identical to the adapter disabled, which TRL uses when no "ref" exists."""
    peft_config = getattr(model, "peft_config", None)
    if peft_config and "ref" in peft_config:
        model.delete_adapter("ref")
        model.set_adapter("default")
