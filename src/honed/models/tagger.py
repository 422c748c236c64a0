"""A saved token classifier (a honed ``ner`` run folder: full weights, or base + adapter) as
an entity tagger: texts in, character spans out.

Built on transformers' token-classification pipeline with ``aggregation_strategy="simple"``
(word pieces of one entity merged), the same way a user loads the folder with stock tools.
Long texts are cut into overlapping windows (``stride``) instead of failing past the model's
positions.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Share of a window repeated in the next one, so that an entity on a cut is seen whole.
_STRIDE_SHARE = 8


@dataclass(frozen=True)
class Entity:
    """``text[start:end]`` is an ``entity`` (the model's type name, B-/I- removed)."""

    entity: str
    start: int
    end: int
    score: float


def load_token_classifier(folder: Path) -> tuple[Any, Any]:
    """The saved model (full weights, or base + adapter) and its tokenizer."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        from honed.models.adapters import load_adapter_model

        model = load_adapter_model(folder)
    else:
        model = AutoModelForTokenClassification.from_pretrained(str(folder), use_safetensors=True)
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(folder))


class Tagger:
    """Entities in texts from a token classifier; thread-safe (one call at a time)."""

    def __init__(self, folder: Path, device: str = "cpu"):
        from transformers import pipeline

        model, tokenizer = load_token_classifier(Path(folder))
        positions = getattr(model.config, "max_position_embeddings", None) or 512
        tokenizer.model_max_length = min(tokenizer.model_max_length, positions)
        self.labels = sorted(
            {str(v).split("-", 1)[-1] for v in model.config.id2label.values()} - {"O"}
        )
        self._pipe = pipeline(
            "token-classification",
            model=model,
            tokenizer=tokenizer,
            aggregation_strategy="simple",
            stride=max(tokenizer.model_max_length // _STRIDE_SHARE, 1),
            device=device,
        )
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> list[list[Entity]]:
        if not texts:
            return []
        with self._lock:
            found = self._pipe(list(texts))
        if texts and found and isinstance(found[0], dict):  # one text: a flat list
            found = [found]
        return [
            [
                Entity(str(e["entity_group"]), int(e["start"]), int(e["end"]), float(e["score"]))
                for e in row
            ]
            for row in found
        ]
