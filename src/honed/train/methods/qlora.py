"""QLoRA (Dettmers et al., 2023): LoRA on top of a frozen base quantized to 4-bit NF4.

The base loads through bitsandbytes as NF4 with double quantization (the quantization constants
are quantized too, ~0.4 bit/param saved) and bf16 compute; LoRA matrices train in higher
precision on top. On CUDA the optimizer is paged AdamW (optimizer state pages to CPU memory
under pressure, avoiding OOM spikes); elsewhere plain AdamW.

CPU trap (bitsandbytes 0.50): on CPUs with AVX512-bf16, a ``Linear4bit`` forward in eval mode
without grad (evaluation, ``generate``) repacks its weight into a CPU-only layout and from then
on uses a kernel that has no backward: later training steps silently get no gradient through
that layer, so the LoRA matrices on it stop learning. ``prepare`` turns that fast path off on
every ``Linear4bit`` (``support_avx512bf16_for_cpu = False``).
"""

from __future__ import annotations

from typing import Any

from honed.train.config import MethodConfig
from honed.train.methods.lora import lora_config

#: NF4 ("normal float 4"): 4-bit levels at the quantiles of a normal distribution, which is
#: how pretrained weights are distributed. Proposed MethodConfig fields would override these.
SKIP_MODULES = ["lm_head", "classifier", "score", "pooler"]


def disable_cpu_repack(model: Any) -> int:
    """Turn off bitsandbytes' CPU inference repacking on every Linear4bit; returns how many."""
    _require_bitsandbytes()
    import bitsandbytes as bnb

    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


class QLora:
    name = "qlora"
    is_adapter = True
    #: Tells merge/export that the trained base was quantized (merging dequantizes first).
    quantized_base = True

    def load_kwargs(self, cfg: MethodConfig) -> dict[str, Any]:
        import torch

        try:
            from transformers import BitsAndBytesConfig
        except ImportError as err:  # pragma: no cover - transformers always has it
            raise ImportError("QLoRA needs transformers' BitsAndBytesConfig") from err
        _require_bitsandbytes()
        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=cfg.qlora.quant_type,
                bnb_4bit_use_double_quant=cfg.qlora.double_quant,
                bnb_4bit_compute_dtype=getattr(torch, cfg.qlora.compute_dtype),
                # Heads stay in full precision: they are new (trained through modules_to_save)
                # or tiny, and BERT's pooler feeds the classifier directly.
                llm_int8_skip_modules=SKIP_MODULES,
            )
        }

    def prepare(self, model: Any, cfg: MethodConfig, peft_task_type: str) -> Any:
        from peft import get_peft_model, prepare_model_for_kbit_training

        # Freezes the base, upcasts norms/embeddings to fp32 for stable training and makes the
        # input embeddings' output require grad (so LoRA grads flow through frozen layers).
        # Gradient checkpointing is the trainer's choice, not the method's.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        disable_cpu_repack(model)
        return get_peft_model(model, lora_config(model, cfg, peft_task_type))

    def optim(self) -> str:
        """transformers ``optim`` name: paged AdamW on CUDA, AdamW elsewhere."""
        import torch

        return "paged_adamw_32bit" if torch.cuda.is_available() else "adamw_torch"


def _require_bitsandbytes() -> None:
    from honed.errors import HonedError
    from honed.quiet import allow_bitsandbytes

    allow_bitsandbytes()  # the CLI keeps it unimported until QLoRA needs it
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise HonedError(
            "method 'qlora' needs bitsandbytes (4-bit NF4 weights): pip install bitsandbytes"
        ) from None


METHOD = QLora()
