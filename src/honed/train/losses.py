"""Causal-LM loss on supervised tokens only, a chunk of logits at a time.

A small model with a large vocabulary (SmolLM2: 576 hidden, 49,152 tokens) spends much of its
training memory on logits: ``model(..., labels=...)`` materialises float32 logits for every
position, (batch, seq, vocab), plus their gradient, although only completion tokens carry a
label. Here the LM head and cross-entropy run on the supervised positions only, in chunks of
``CHUNK`` tokens under activation checkpointing, so at most one chunk's logits exist at a time
(in forward, and again in backward). The value and the gradients are those of the model's own
loss (same shift, same ignore index, same normalisation by ``num_items_in_batch``); a test
checks both.

Why by hand: TRL's SFTTrainer patches its own fused LM head in, which on CPU raised peak RSS by
a third over plain full logits (bench/train_memory.py: LoRA, batch 4 x 512, gradient
checkpointing: full logits 3,722 MiB, this loss 3,151 MiB, TRL's fused head 4,946 MiB), and
Liger's fused linear cross-entropy needs Triton/CUDA.
"""

from __future__ import annotations

from typing import Any

CHUNK = 512  # supervised tokens per chunk: 512 x 49,152 fp32 logits = 96 MiB
IGNORE = -100


def chunked_ce_sum(hidden: Any, head: Any, labels: Any, chunk: int = CHUNK) -> tuple[Any, int]:
    """(sum of token cross-entropies, number of supervised tokens).

    hidden: (b, seq, d) final hidden states; labels: (b, seq) with -100 where unsupervised.
    Position t predicts token t+1, as in transformers' ForCausalLMLoss.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    targets = labels[:, 1:]  # (b, seq-1)
    keep = targets != IGNORE
    h, y = hidden[:, :-1][keep], targets[keep]  # (n, d), (n,)

    def chunk_loss(hh: Any, yy: Any) -> Any:
        logits = head(hh).float()  # (chunk, vocab): freed after forward, recomputed in backward
        return torch.nn.functional.cross_entropy(logits, yy, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, y.numel(), chunk):
        part = checkpoint(chunk_loss, h[i : i + chunk], y[i : i + chunk], use_reentrant=False)
        total = total + part
    return total, int(y.numel())


def supports_chunked_loss(model: Any) -> bool:
    """Whether plain head + cross-entropy equals the model's loss: no logit scaling or
    soft-capping, no router auxiliary loss, a decoder and output embeddings to call."""
    backbone = _backbone(model)
    config = backbone.config
    scaling = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier")
    if any(getattr(config, k, None) is not None for k in scaling):
        return False
    if getattr(config, "output_router_logits", False):
        return False
    try:
        return backbone.get_decoder() is not None and backbone.get_output_embeddings() is not None
    except (AttributeError, NotImplementedError):
        return False


def supervised_lm_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
    """The causal-LM loss of ``inputs`` (input_ids, labels, attention_mask / position_ids)."""
    backbone = _backbone(model)
    forward = {
        k: inputs[k]
        for k in ("input_ids", "attention_mask", "position_ids")
        if inputs.get(k) is not None
    }
    hidden = backbone.get_decoder()(**forward, use_cache=False).last_hidden_state  # (b, seq, d)
    total, n = chunked_ce_sum(hidden, backbone.get_output_embeddings(), inputs["labels"])
    if num_items_in_batch is None:
        return total / max(n, 1)
    # Normalised over all gradient-accumulation micro-batches, like the model's own loss (the
    # Trainer then does not divide by the accumulation steps again).
    return total / num_items_in_batch


def with_chunked_loss(trainer_cls: type, training: Any) -> type:
    """``trainer_cls`` training causal LMs with ``supervised_lm_loss``, unless
    ``training.chunked_lm_loss`` is off or label smoothing needs the full logits."""
    if not training.chunked_lm_loss or training.label_smoothing:
        return trainer_cls
    return type(f"Chunked{trainer_cls.__name__}", (ChunkedLossMixin, trainer_cls), {})


def _backbone(model: Any) -> Any:
    """The transformers model under a peft wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class ChunkedLossMixin:
    """For a transformers/TRL Trainer: training steps use ``supervised_lm_loss``.

    Evaluation keeps the trainer's own loss (no autograd graph there, so logits are transient),
    and so do multi-process runs: the wrapped model's forward must run for DDP / FSDP to
    synchronise gradients. Training-time token accuracy / entropy logs are not computed.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        plain = self.accelerator.unwrap_model(model)
        if (
            return_outputs
            or not model.training
            or self.accelerator.num_processes > 1
            or not supports_chunked_loss(plain)
        ):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return supervised_lm_loss(plain, inputs, num_items_in_batch)
