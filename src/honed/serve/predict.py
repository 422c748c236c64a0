"""Load a trained classification folder (full model or adapter) and predict labels.

Used by ``honed predict``, by the evaluation of a run (so the test scores come from the saved
files, proving the round trip) and by the server's /v1/classify.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from honed.errors import ModelError
from honed.models.heads import load_classifier, resolve_pooling


def read_lineage(folder: Path) -> dict[str, Any]:
    path = folder / "lineage.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def adapter_base_path(folder: Path, lineage: dict[str, Any]) -> Path:
    """The base model an adapter folder was trained on, checked against its recorded digest."""
    from honed.models.config import ModelConfig
    from honed.models.resolve import resolve_model

    base = lineage.get("base_model") or {}
    if not base.get("source"):
        raise ModelError(f"{folder}: adapter without lineage.json naming its base model")
    resolved = resolve_model(ModelConfig(base=base["source"]))
    if base.get("digest") and resolved.digest != base["digest"]:
        raise ModelError(
            f"{folder}: base model {base['source']!r} changed since training "
            f"(digest {resolved.digest[:12]} != recorded {base['digest'][:12]})"
        )
    return resolved.path


class Predictor:
    """Batched classification: texts in, ``{label, score, scores}`` out."""

    def __init__(self, model: Any, tokenizer: Any, labels: list[str], max_length: int = 128):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.labels = labels
        self.max_length = max_length

    @classmethod
    def from_folder(cls, folder: str | Path, merge: bool = True) -> Predictor:
        from transformers import AutoTokenizer

        folder = Path(folder)
        if not folder.is_dir():
            raise ModelError(f"{folder}: model folder not found")
        lineage = read_lineage(folder)
        max_length = (lineage.get("spec") or {}).get("model", {}).get("max_length", 128)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        if (folder / "adapter_config.json").is_file():
            model = cls._load_adapter(folder, lineage, merge)
        else:
            model = load_classifier(folder, use_safetensors=True)
        labels = lineage.get("labels") or [
            model.config.id2label[i] for i in range(model.config.num_labels)
        ]
        return cls(model, tokenizer, list(labels), max_length)

    @staticmethod
    def _load_adapter(folder: Path, lineage: dict[str, Any], merge: bool) -> Any:
        from peft import PeftModel

        labels = lineage.get("labels") or []
        base_path = adapter_base_path(folder, lineage)
        requested = (lineage.get("spec") or {}).get("model", {}).get("pooling", "auto")
        base = load_classifier(
            base_path,
            resolve_pooling(requested, base_path),
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            use_safetensors=True,
        )
        model = PeftModel.from_pretrained(base, str(folder))
        # Merging removes the adapter's per-call overhead for inference.
        return model.merge_and_unload() if merge else model

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[dict[str, Any]]:
        import torch

        results: list[dict[str, Any]] = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                probs = self.model(**batch).logits.float().softmax(-1)  # (b, n_labels)
                results.extend(self._rows(probs))
        return results

    def _rows(self, probs: Any) -> list[dict[str, Any]]:
        rows = []
        for p in probs.tolist():
            best = max(range(len(p)), key=p.__getitem__)
            rows.append(
                {
                    "label": self.labels[best],
                    "score": p[best],
                    "scores": dict(zip(self.labels, p, strict=True)),
                }
            )
        return rows
