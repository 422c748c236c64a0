"""QLoRA (Dettmers et al., 2023): LoRA on top of a frozen base quantized to 4-bit NF4.

The base loads through bitsandbytes as NF4 with double quantization (the quantization constants
are quantized too, ~0.4 bit/param saved) and bf16 compute; LoRA matrices train in higher
precision on top. On CUDA the optimizer is paged AdamW (optimizer state pages to CPU memory
under pressure, avoiding OOM spikes); elsewhere plain AdamW.

CPU trap (bitsandbytes 0.50): a ``Linear4bit`` run in eval mode without grad on an AVX512-bf16
CPU switches to a kernel without backward (see honed.models.quantize). ``prepare`` turns that
fast path off on every ``Linear4bit``, and so does every load of a trained QLoRA model.
"""

from __future__ import annotations

from typing import Any

from honed.models.quantize import disable_cpu_repack, four_bit_load_kwargs
from honed.train.config import MethodConfig
from honed.train.methods.lora import lora_config


class QLora:
    name = "qlora"
    is_adapter = True
    #: Tells merge/export and evaluation that the trained base was quantized.
    quantized_base = True

    def load_kwargs(self, cfg: MethodConfig) -> dict[str, Any]:
        return four_bit_load_kwargs(cfg.qlora)

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


METHOD = QLora()
