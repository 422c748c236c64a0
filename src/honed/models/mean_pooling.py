"""Masked mean pooling for sequence classifiers, self-contained (imports torch/transformers only).

This file is honed's own implementation *and* the code written into every mean-pooled run
folder as ``modeling_honed.py`` (followed by that model's config and model classes), so that a
user who opts in to the folder's code in stock ``AutoModelForSequenceClassification`` or
``pipeline`` runs exactly the forward pass honed trained and evaluated. honed never opts in
for them. Keep it free of honed imports.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_outputs import SequenceClassifierOutput

#: ``model_type`` of a mean-pooled classifier is this prefix + the base's model_type.
MODEL_TYPE_PREFIX = "honed_mean_pool_"


class MeanPoolingMixin:
    """Replaces the CLS pooler with the attention-masked token mean (same classifier layer).

    Put it before a stock ``*ForSequenceClassification`` class whose head is ``dropout`` +
    one linear ``classifier`` (BERT, RoBERTa, ...). The encoder's pooler is removed: its
    weights are neither used nor saved.
    """

    # A base checkpoint's pooler weights are expected to go unused: no "unexpected keys" log.
    _keys_to_ignore_on_load_unexpected = (r"pooler\.",)

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        encoder = getattr(self, self.base_model_prefix)
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs: Any):
        kwargs.pop("return_dict", None)  # peft passes it; the encoder output is read as a dict
        encoder = getattr(self, self.base_model_prefix)
        hidden = encoder(input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)[0]
        # hidden: (batch, seq, hidden); mask: (batch, seq, 1) with 0 on padding.
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], device=hidden.device)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (batch, hidden)
        logits = self.classifier(self.dropout(pooled))  # (batch, num_labels)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits.float(), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)
