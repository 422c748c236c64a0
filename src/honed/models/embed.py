"""Sentence embeddings from an encoder: mean pooling over tokens, L2-normalised.

This is what sentence-transformers does for all-MiniLM-L6-v2 (its 1_Pooling config says
mean pooling); doing it here avoids a dependency for ~20 lines. Used by the embeddings
baseline and by drift detection.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from honed.progress import progress


class Embedder:
    """Encode texts into unit vectors of shape (n_texts, hidden_size)."""

    def __init__(self, model_path: str | Path, max_length: int = 128, batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        self.model = AutoModel.from_pretrained(str(model_path), use_safetensors=True).eval()
        self.max_length = max_length
        self.batch_size = batch_size

    @classmethod
    def packaged(cls, name: str = "all-minilm-l6-v2", **kwargs) -> Embedder:
        from honed.models.packaged import packaged_path

        return cls(packaged_path(name), **kwargs)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        out: list[np.ndarray] = []
        # Sort by length so each batch pads little; restore the order at the end.
        order = np.argsort([len(t) for t in texts], kind="stable")
        with torch.inference_mode():
            batches = range(0, len(texts), self.batch_size)
            for start in progress(batches, "embedding", unit="batch"):
                idx = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state  # (b, seq, hidden)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, seq, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (b, hidden)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out.append(pooled.float().numpy())
        if not out:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        stacked = np.concatenate(out)
        result = np.empty_like(stacked)
        result[order] = stacked
        return result
