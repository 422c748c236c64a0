"""Padding-free ("packed") classifier forward passes on CPU.

Why: a padded pass costs rows x longest row. PhraseBank-like traffic (mean ~30 tokens, a tail
to 150) wastes much of that on padding even after length sorting, and cutting a micro-batch
into short passes to limit the waste makes each pass small and its per-op overhead large. In a
packed pass the texts are concatenated into one row of T real tokens, with position ids that
restart at 0 for each text. Every Linear, LayerNorm and GELU (~80% of an encoder's time)
treats tokens independently, so it runs on the T real tokens only and gives the same numbers.
Attention is the one op that mixes tokens: the attention function registered here runs it
text by text, on each text's own slice of q/k/v. Pooling happens per text as well (masked
mean through ``index_add``, or each text's first token through the model's own pooler).
int8 MiniLM, one thread, random PhraseBank micro-batches of 16: 303 vs 212 texts/s (1.43x);
float32 1.41x with logits equal to the padded pass within 2e-6.

Why by hand: transformers' padding-free path (``position_ids`` / ``cu_seq_lens_*``) feeds the
flash-attention varlen kernels, which are CUDA-only; its SDPA path builds a dense T x T
block mask instead (T^2 scores: ~4x a length-sorted padded pass's at T ~ 500). What is written
here is the small per-text attention loop and the pooling; the model's own modules do the
rest. GPU servers keep padded passes: there a padded pass is one kernel launch per op.

A model is packed only when a probe at load time gives the padded pass's logits: texts of
different lengths, packed vs padded, within tolerance. Architectures whose attention or head
does not fit (a head that is not one Linear, position ids computed inside the model, ...)
fail the probe and keep padded passes.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("honed.serve")

#: The transformers attention implementation name this module registers.
ATTENTION = "honed_packed"
#: The forward kwarg carrying the packed texts' lengths (it reaches the attention function).
LENGTHS_KWARG = "honed_packed_lengths"
PROBE_TEXTS = (
    "operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period",
    "profits fell",
    "the board proposes a dividend of EUR 0.50 per share",
)


def packed_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Attention per packed text; without packed lengths, transformers' SDPA attention.

    query/key/value: (1, heads, T, head_dim) with T = sum(lengths). Returns
    (1, T, heads, head_dim), the layout transformers' attention functions return.
    """
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from honed.models import cpu_encoder

    lengths = kwargs.pop(LENGTHS_KWARG, None)
    if lengths is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    # honed's kernel: every text in one call (~150 us a text a layer saved on MiniLM)
    out = cpu_encoder.attention(query, key, value, lengths, scaling)
    if out is not None:
        return out, None
    parts = zip(
        query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2), strict=True
    )
    # Each text attends to its own tokens only; no mask is needed inside a text.
    outs = [F.scaled_dot_product_attention(q, k, v, scale=scaling) for q, k, v in parts]
    return torch.cat(outs, 2).transpose(1, 2), None  # (1, T, heads, head_dim)


def register() -> None:
    """Make ``ATTENTION`` known to transformers (idempotent). Its masks are SDPA's."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, packed_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def is_packed(model: Any) -> bool:
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == ATTENTION


def logits(model: Any, ids: list[list[int]]) -> Any:
    """(B, num_labels) logits of B non-empty token id lists in one packed pass."""
    import torch

    device = next(model.parameters()).device
    lengths = [len(x) for x in ids]
    flat = torch.tensor([[t for row in ids for t in row]], device=device)  # (1, T)
    positions = torch.cat([torch.arange(n) for n in lengths]).to(device)[None]  # (1, T)
    encoder = getattr(model, model.base_model_prefix)
    hidden = encoder(
        input_ids=flat,
        position_ids=positions,
        return_dict=True,
        **{LENGTHS_KWARG: lengths},
    ).last_hidden_state[0]  # (T, hidden)
    pooled = _pool(model, encoder, hidden, lengths)  # (B, hidden)
    return model.classifier(model.dropout(pooled))


def _pool(model: Any, encoder: Any, hidden: Any, lengths: list[int]) -> Any:
    import torch

    from honed.models.heads import MeanPoolingMixin

    counts = torch.tensor(lengths, device=hidden.device)
    if isinstance(model, MeanPoolingMixin):
        rows = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), counts)
        sums = hidden.new_zeros(len(lengths), hidden.shape[-1]).index_add_(0, rows, hidden)
        return sums / counts[:, None].to(hidden.dtype)
    starts = torch.cumsum(counts, 0) - counts  # each text's first token ([CLS])
    return encoder.pooler(hidden[starts][:, None, :])  # the pooler reads [:, 0]


def _head_fits(model: Any) -> bool:
    """The head this module re-creates: dropout + one Linear over a pooled vector, pooled by
    honed's masked mean or by the encoder's own first-token pooler (BERT's layout)."""
    import torch

    from honed.models.heads import MeanPoolingMixin

    encoder = getattr(model, getattr(model, "base_model_prefix", ""), None)
    linear_head = isinstance(getattr(model, "classifier", None), torch.nn.Linear) and hasattr(
        model, "dropout"
    )
    pooled = isinstance(model, MeanPoolingMixin) or getattr(encoder, "pooler", None) is not None
    return encoder is not None and linear_head and pooled


def enable(model: Any, tokenizer: Any) -> bool:
    """Switch ``model`` (eval mode, on CPU) to packed passes if its probe matches the padded
    pass; otherwise leave it as it was. Returns whether it is packed."""
    if not _head_fits(model):
        log.info("classifier head does not fit packed passes: padded passes")
        return False
    register()
    before = model.config._attn_implementation
    model.config._attn_implementation = ATTENTION
    try:
        gap = _probe(model, tokenizer)
    except Exception as err:  # an architecture that takes no position_ids, ...
        gap, reason = None, f"{type(err).__name__}: {err}"
    else:
        reason = f"logits differ by {gap:.2e}"
    tolerance = 1e-4 if _dtype(model) == "float32" else 5e-2
    if gap is None or gap > tolerance:
        model.config._attn_implementation = before
        log.info("packed classifier passes disabled (%s): padded passes", reason)
        return False
    log.info("packed classifier passes (probe: %s)", reason)
    return True


def _probe(model: Any, tokenizer: Any) -> float:
    """Largest |packed - padded| logit over texts of different lengths."""
    import torch

    ids = tokenizer(list(PROBE_TEXTS), truncation=True, max_length=64)["input_ids"]
    padded = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
    with torch.inference_mode():
        want = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        got = logits(model, ids)
    return float((want.float() - got.float()).abs().max())


def _dtype(model: Any) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")
