"""Text classification: AutoModelForSequenceClassification with the transformers Trainer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from honed.data.dataset import SplitData, load_classification
from honed.data.sources import resolve_sources
from honed.evals import classification as cls_eval
from honed.models.heads import load_classifier, resolve_pooling
from honed.models.resolve import load_kwargs
from honed.train import common
from honed.train.methods import get_method

if TYPE_CHECKING:
    from honed.data.frozen import EvalSet
    from honed.models.resolve import ResolvedModel
    from honed.paths import RunPaths
    from honed.spec import RunSpec


def _tokenized(rows: list[dict], tokenizer: Any, label2id: dict[str, int], max_length: int):
    """A datasets.Dataset of input_ids/attention_mask/labels, unpadded (the collator pads)."""
    import datasets

    ds = datasets.Dataset.from_dict(
        {"text": [r["text"] for r in rows], "label": [label2id[r["label"]] for r in rows]}
    )

    def encode(batch: dict) -> dict:
        enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
        enc["labels"] = batch["label"]
        enc["length"] = [len(ids) for ids in enc["input_ids"]]  # for group_by_length
        return enc

    return ds.map(encode, batched=True, remove_columns=["text", "label"])


def _compute_metrics(labels: list[str]):
    def compute(eval_pred: Any) -> dict[str, float]:
        logits, label_ids = eval_pred
        pred_ids = logits.argmax(-1)  # logits: (n, n_labels)
        metrics = cls_eval.classification_metrics(
            [labels[i] for i in label_ids], [labels[i] for i in pred_ids], labels
        )
        return {k: v for k, v in metrics.items() if isinstance(v, float)}

    return compute


class ClassificationTask:
    name = "classification"
    peft_task_type = "SEQ_CLS"
    #: prepare_data takes ``frozen``: a frozen evaluation set used as the test split.
    frozen_eval = True

    def prepare_data(self, spec: RunSpec, frozen: EvalSet | None = None) -> SplitData:
        sources = resolve_sources(spec.data, spec.base_dir)
        return load_classification(spec.data, sources=sources, frozen=frozen)

    def data_fields(self, spec: RunSpec, first_row: Any) -> dict[str, str]:
        return {spec.data.text_field: "data.text_field", spec.data.label_field: "data.label_field"}

    def load_model(self, spec: RunSpec, base: ResolvedModel, labels: list[str]) -> Any:
        method = get_method(spec.method.name)
        model = load_classifier(
            base.path,
            resolve_pooling(spec.model.pooling, base.path),
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            **load_kwargs(spec.model),
            **method.load_kwargs(spec.method),
        )
        return method.prepare(model, spec.method, self.peft_task_type)

    def train(
        self, spec: RunSpec, data: SplitData, base: ResolvedModel, paths: RunPaths, resume: bool
    ) -> dict[str, Any]:
        from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

        common.setup_runtime(spec.training)
        labels = list(data.labels or [])
        label2id = {label: i for i, label in enumerate(labels)}
        tokenizer = AutoTokenizer.from_pretrained(str(base.path))
        model = self.load_model(spec, base, labels)
        max_len = spec.model.max_length
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**common.training_arguments_kwargs(spec.training, paths)),
            train_dataset=_tokenized(data.train, tokenizer, label2id, max_len),
            eval_dataset=_tokenized(data.validation, tokenizer, label2id, max_len),
            processing_class=tokenizer,
            # Dynamic padding: each batch pads to its longest row, not to max_length.
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=_compute_metrics(labels),
            callbacks=common.callbacks(spec.training),
        )
        return common.train_and_save(trainer, tokenizer, paths, resume)

    def evaluate(
        self, spec: RunSpec, data: SplitData, base: ResolvedModel, paths: RunPaths
    ) -> dict[str, Any]:
        from honed.models.predict import Predictor

        labels = list(data.labels or [])
        predictor = Predictor.from_folder(paths.model_dir)
        preds = predictor.predict([r["text"] for r in data.test])
        y_true = [r["label"] for r in data.test]
        tuned = cls_eval.classification_metrics(y_true, [p["label"] for p in preds], labels)
        matrix = cls_eval.confusion(y_true, [p["label"] for p in preds], labels)
        cls_eval.save_confusion_png(matrix, labels, paths.confusion_png, f"{spec.name} (test)")
        report: dict[str, Any] = {
            **{f"test_{k}": v for k, v in tuned.items() if isinstance(v, float)},
            "test": {**tuned, "confusion_matrix": matrix, "labels": labels, "rows": len(y_true)},
            "baselines": self._baselines(spec, data, base, labels),
            "worst_errors": cls_eval.worst_errors(data.test, preds, spec.eval.worst_examples),
            # Not written to metrics.json: the pipeline stores them in the reference profile.
            "reference_outputs": {
                "predictions": [p["label"] for p in preds],
                "confidences": [p["score"] for p in preds],
            },
        }
        return report

    def _baselines(
        self, spec: RunSpec, data: SplitData, base: ResolvedModel, labels: list[str]
    ) -> dict[str, Any]:
        y_test = [r["label"] for r in data.test]
        out: dict[str, Any] = {}
        if "majority" in spec.eval.baselines:
            out["majority"] = cls_eval.majority_baseline(
                [r["label"] for r in data.train], y_test, labels
            )
        if "embeddings_logreg" in spec.eval.baselines:
            out["embeddings_logreg"] = cls_eval.embeddings_logreg_baseline(
                base.path, data.train + data.validation, data.test, labels, spec.model.max_length
            )
        return out


TASK = ClassificationTask()
