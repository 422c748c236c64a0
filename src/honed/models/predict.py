"""Load a trained classification folder (full model or adapter) and predict labels.

Used by ``honed predict``, by the evaluation of a run (so the test scores come from the saved
files, proving the round trip) and by the server's /v1/classify.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from honed.errors import ModelError
from honed.models.heads import load_classifier, load_tokenizer
from honed.paths import read_lineage
from honed.progress import progress


class Predictor:
    """Batched classification: texts in, ``{label, score, scores}`` out."""

    def __init__(self, model: Any, tokenizer: Any, labels: list[str], max_length: int = 128):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.labels = labels
        self.max_length = max_length

    @classmethod
    def from_folder(cls, folder: str | Path, merge: bool = True) -> Predictor:
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelError(f"{folder}: model folder not found")
        lineage = read_lineage(folder)
        max_length = (lineage.get("spec") or {}).get("model", {}).get("max_length", 128)
        tokenizer = load_tokenizer(folder)
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
        from honed.models.adapters import adapter_info, check_base_digest, load_adapter_model

        check_base_digest(adapter_info(folder))  # an adapter on a changed base is refused
        model = load_adapter_model(folder)
        # Merging removes the adapter's per-call overhead for inference.
        return model.merge_and_unload() if merge else model

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[dict[str, Any]]:
        import torch

        results: list[dict[str, Any]] = []
        with torch.inference_mode():
            for start in progress(range(0, len(texts), batch_size), "predicting", unit="batch"):
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
        return label_rows(probs.tolist(), self.labels)


def label_rows(probs: list[list[float]], labels: list[str]) -> list[dict[str, Any]]:
    """``{label, score, scores}`` per row of class probabilities (the /v1/classify shape)."""
    rows = []
    for p in probs:
        best = max(range(len(p)), key=p.__getitem__)
        rows.append(
            {"label": labels[best], "score": p[best], "scores": dict(zip(labels, p, strict=True))}
        )
    return rows
