"""LoRA (peft): low-rank updates on chosen linear layers; the base stays frozen."""

from __future__ import annotations

from typing import Any

from honed.train.config import MethodConfig

# Attention + MLP projections per architecture (model_type). Adapting the MLP as well as
# attention is what QLoRA's paper found necessary to match full fine-tuning.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "t5": ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


def target_modules(model: Any, cfg: MethodConfig) -> list[str] | str:
    """Spec's targets, else the table's, else every linear layer (peft's 'all-linear')."""
    if cfg.lora.target_modules:
        return cfg.lora.target_modules
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    return DEFAULT_TARGETS.get(model_type, "all-linear")


def lora_config(model: Any, cfg: MethodConfig, peft_task_type: str):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType[peft_task_type],
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        bias=cfg.lora.bias,
        target_modules=target_modules(model, cfg),
    )


class Lora:
    name = "lora"
    is_adapter = True

    def load_kwargs(self, cfg: MethodConfig) -> dict[str, Any]:
        return {}

    def prepare(self, model: Any, cfg: MethodConfig, peft_task_type: str) -> Any:
        from peft import get_peft_model

        # SEQ_CLS makes peft train and save the new classification head (modules_to_save).
        return get_peft_model(model, lora_config(model, cfg, peft_task_type))


METHOD = Lora()
