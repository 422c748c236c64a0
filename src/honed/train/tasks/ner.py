"""Named-entity recognition (token classification): AutoModelForTokenClassification with the
transformers Trainer, BIO labels on word pieces, seqeval's entity-level metrics.

Rows hold a text and character spans, ``{"text": ..., "spans": [{"entity_type": "PERSON",
"start": 0, "end": 5}, ...]}``; ``data.text_field`` and ``task_options`` map other field names
(e.g. Presidio's synthetic set: ``full_text`` and ``spans[entity_type, start_position,
end_position]``), rename entity types (``entity_map``) and keep a subset (``entities``).

Each word piece takes the label of the span it overlaps (``B-`` on the span's first piece,
``I-`` after), found from the fast tokenizer's character offsets, so the saved folder works
with stock ``pipeline("token-classification", aggregation_strategy="simple")``.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from pydantic import Field

from honed.config_base import StrictModel
from honed.data.dataset import SplitData
from honed.data.loaders import BadRow, RawData
from honed.evals import ner as ner_eval
from honed.train import common
from honed.train.methods import get_method
from honed.train.tasks._shared import (
    dedup_first,
    keep_training_kernels,
    read_text_sources,
    selection_metric,
    split_text_rows,
    task_options,
)

if TYPE_CHECKING:
    from honed.data.sources import Source
    from honed.models.resolve import ResolvedModel
    from honed.paths import RunPaths
    from honed.spec import RunSpec

IGNORE_INDEX = -100  # special tokens: no label, no loss


class NerOptions(StrictModel):
    """Where a row's entity spans are and which entity types the model learns."""

    spans_field: str = Field("spans", description="Row field holding the list of spans.")
    type_key: str = Field("entity_type", description="Key of a span's entity type.")
    start_key: str = Field("start", description="Key of a span's first character (0-based).")
    end_key: str = Field("end", description="Key of the character after a span's last one.")
    entity_map: dict[str, str] = Field(
        default_factory=dict,
        description="Renamed entity types, e.g. {GPE: LOCATION}; unlisted types keep their name.",
    )
    entities: list[str] | None = Field(
        None,
        min_length=1,
        description="Entity types (after entity_map) the model learns; spans of other types "
        "are dropped (their tokens are 'O'). Default: every type in the data.",
    )


# --------------------------------------------------------------------------------------------
# Data


def _span(raw: Any, text: str, opts: NerOptions) -> dict[str, Any] | str:
    """One span normalised to {entity_type, start, end}, or the problem with it."""
    if not isinstance(raw, dict):
        return "a span is not an object"
    kind, start, end = (raw.get(k) for k in (opts.type_key, opts.start_key, opts.end_key))
    if not isinstance(kind, str) or not kind:
        return f"a span has no {opts.type_key!r}"
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
        return f"span {kind} [{start}, {end}) is not inside the text ({len(text)} chars)"
    return {"entity_type": opts.entity_map.get(kind, kind), "start": start, "end": end}


def _spans(rec_fields: dict[str, Any], text: str, opts: NerOptions) -> list[dict] | str:
    raw = rec_fields.get(opts.spans_field)
    if not isinstance(raw, list):
        return f"field {opts.spans_field!r} is missing or not a list of spans"
    spans = []
    for item in raw:
        span = _span(item, text, opts)
        if isinstance(span, str):
            return span
        if opts.entities is None or span["entity_type"] in opts.entities:
            spans.append(span)
    return sorted(spans, key=lambda s: (s["start"], -s["end"]))


def _parser(spec: RunSpec, opts: NerOptions):
    def parse(raw: RawData, src: Source) -> tuple[list[dict[str, Any]], list[BadRow]]:
        rows, bad = [], list(raw.bad_rows)
        field = src.cfg.text_field
        for rec in raw.records:
            text = rec.fields.get(field)
            if not isinstance(text, str) or not text.strip():
                bad.append(BadRow(rec.file, rec.line, f"empty or missing field {field!r}"))
                continue
            spans = _spans(rec.fields, text, opts)
            if isinstance(spans, str):
                bad.append(BadRow(rec.file, rec.line, spans))
            else:
                rows.append({"line": rec.line, "text": text, "spans": spans})
        return rows, bad

    return parse


def bio_labels(entity_types: list[str]) -> list[str]:
    """``O`` then ``B-``/``I-`` per type, in a fixed order (the model's label ids)."""
    return ["O"] + [f"{p}-{t}" for t in sorted(entity_types) for p in ("B", "I")]


def piece_labels(offsets: list[tuple[int, int]], spans: list[dict[str, Any]]) -> list[str | None]:
    """The BIO label of each word piece from its character offsets (None: a special token).

    A piece overlapping a span is ``B-`` when it is the span's first piece, else ``I-``;
    overlapping spans (nested in the data) go to the one starting first.
    """
    out: list[str | None] = []
    begun: set[int] = set()
    for start, end in offsets:
        if start == end:
            out.append(None)
            continue
        hit = next((i for i, s in enumerate(spans) if start < s["end"] and end > s["start"]), None)
        if hit is None:
            out.append("O")
        else:
            out.append(("I-" if hit in begun else "B-") + spans[hit]["entity_type"])
            begun.add(hit)
    return out


class NerTask:
    name = "ner"
    options_model = NerOptions  # validates the spec's task_options
    peft_task_type = "TOKEN_CLS"  # LoRA also trains and saves the new classifier head

    def data_fields(self, spec: RunSpec, first_row: Any) -> dict[str, str]:
        opts = task_options(spec, NerOptions)
        return {spec.data.text_field: "data.text_field", opts.spans_field: "task_options"}

    def prepare_data(self, spec: RunSpec) -> SplitData:
        opts = task_options(spec, NerOptions)
        read = read_text_sources(spec, _parser(spec, opts))
        dups = dedup_first(read, lambda r: r["text"]) if spec.data.dedup else 0
        if len(read.rows) < 3:
            from honed.errors import DataError

            raise DataError(f"{read.label}: {len(read.rows)} usable row(s); need 3 to split")
        data = split_text_rows(
            read,
            spec,
            dups,
            lambda r: r["text"],
            {"text": lambda r: r["text"]},
            fields={"text": spec.data.text_field, "spans": opts.spans_field},
        )
        counts = Counter(s["entity_type"] for r in read.rows for s in r["spans"])
        types = opts.entities or sorted(counts)
        data.labels = bio_labels(list(types))
        data.report["entity_counts"] = {t: counts[t] for t in sorted(types)}
        return data

    # ----------------------------------------------------------------------------------------
    # Model

    def load_model(self, spec: RunSpec, base: ResolvedModel, labels: list[str]) -> Any:
        from transformers import AutoModelForTokenClassification

        from honed.models.resolve import load_kwargs

        method = get_method(spec.method.name)
        model = AutoModelForTokenClassification.from_pretrained(
            str(base.path),
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            **load_kwargs(spec.model),
            **method.load_kwargs(spec.method),
        )
        model = keep_training_kernels(model, method)
        return method.prepare(model, spec.method, self.peft_task_type)

    def train(
        self, spec: RunSpec, data: SplitData, base: ResolvedModel, paths: RunPaths, resume: bool
    ) -> dict[str, Any]:
        from transformers import (
            AutoTokenizer,
            DataCollatorForTokenClassification,
            Trainer,
            TrainingArguments,
        )

        common.setup_runtime(spec.training)
        labels = list(data.labels or [])
        tokenizer = AutoTokenizer.from_pretrained(str(base.path))
        model = self.load_model(spec, base, labels)
        kwargs = common.training_arguments_kwargs(spec.training, paths)
        metric, greater = selection_metric(spec, "f1", greater=True)
        kwargs.update(metric_for_best_model=metric, greater_is_better=greater)
        max_len = spec.model.max_length
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**kwargs),
            train_dataset=encoded(data.train, tokenizer, labels, max_len),
            eval_dataset=encoded(data.validation, tokenizer, labels, max_len),
            processing_class=tokenizer,
            data_collator=DataCollatorForTokenClassification(tokenizer),
            compute_metrics=_compute_metrics(labels),
            callbacks=common.callbacks(spec.training),
        )
        return common.train_and_save(trainer, tokenizer, paths, resume)

    def evaluate(
        self, spec: RunSpec, data: SplitData, base: ResolvedModel, paths: RunPaths
    ) -> dict[str, Any]:
        from honed.models.tagger import load_token_classifier

        labels = list(data.labels or [])
        model, tokenizer = load_token_classifier(paths.model_dir)
        rows = encoded(data.test, tokenizer, labels, spec.model.max_length)
        y_true, y_pred = _predict(model, tokenizer, rows, labels, spec.training.eval_batch_size)
        scores = ner_eval.entity_metrics(y_true, y_pred)
        flat = {k: v for k, v in scores.items() if isinstance(v, float)}
        return {
            **{f"test_{k}": v for k, v in flat.items()},
            "test": {**scores, "labels": labels, "rows": len(data.test)},
            "task_options": task_options(spec, NerOptions).model_dump(),
        }


# --------------------------------------------------------------------------------------------
# Encoding, prediction, metrics


def encoded(rows: list[dict], tokenizer: Any, labels: list[str], max_length: int) -> Any:
    """A datasets.Dataset of input_ids/attention_mask/labels (unpadded; the collator pads)."""
    import datasets

    label2id = {label: i for i, label in enumerate(labels)}
    enc = tokenizer(
        [r["text"] for r in rows],
        truncation=True,
        max_length=max_length,
        return_offsets_mapping=True,
    )
    label_ids = []
    for row, offsets in zip(rows, enc["offset_mapping"], strict=True):
        pieces = piece_labels([tuple(o) for o in offsets], row["spans"])
        label_ids.append([IGNORE_INDEX if p is None else label2id.get(p, 0) for p in pieces])
    return datasets.Dataset.from_dict(
        {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": label_ids,
        }
    )


def _sequences(label_ids: Any, pred_ids: Any, labels: list[str]):
    """Label names per row, special and padding positions (-100) left out."""
    y_true, y_pred = [], []
    for gold_row, pred_row in zip(label_ids, pred_ids, strict=True):
        keep = [i for i, g in enumerate(gold_row) if g != IGNORE_INDEX]
        y_true.append([labels[gold_row[i]] for i in keep])
        y_pred.append([labels[pred_row[i]] for i in keep])
    return y_true, y_pred


def _compute_metrics(labels: list[str]):
    def compute(eval_pred: Any) -> dict[str, float]:
        logits, label_ids = eval_pred
        y_true, y_pred = _sequences(label_ids, logits.argmax(-1), labels)
        scores = ner_eval.entity_metrics(y_true, y_pred)
        return {k: v for k, v in scores.items() if isinstance(v, float)}

    return compute


def _predict(model: Any, tokenizer: Any, rows: Any, labels: list[str], batch_size: int):
    import torch
    from transformers import DataCollatorForTokenClassification

    collate = DataCollatorForTokenClassification(tokenizer)
    y_true: list[list[str]] = []
    y_pred: list[list[str]] = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            batch = collate([rows[j] for j in range(i, min(i + batch_size, len(rows)))])
            gold = batch.pop("labels")
            logits = model(**batch).logits
            t, p = _sequences(gold.tolist(), logits.argmax(-1).tolist(), labels)
            y_true += t
            y_pred += p
    return y_true, y_pred


TASK = NerTask()
