"""Train stage configs: the adaptation method and the optimisation loop."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from honed.config_base import StrictModel
from honed.models.config import QuantParams
from honed.train.distributed import DistributedConfig


class LoraParams(StrictModel):
    """LoRA hyper-parameters (peft.LoraConfig)."""

    r: int = Field(16, gt=0, description="Rank of the update matrices.")
    alpha: int = Field(32, gt=0, description="Scaling numerator: updates scale by alpha / r.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | None = Field(
        None,
        description="Module names to adapt; default: the attention and MLP projections "
        "known for the architecture (see honed.train.methods.lora.DEFAULT_TARGETS).",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train.")


class MethodConfig(StrictModel):
    """How the base model's weights are adapted."""

    name: str = Field("lora", description="Registered method: see `honed methods`.")
    lora: LoraParams = Field(default_factory=LoraParams)
    qlora: QuantParams = Field(default_factory=QuantParams)

    @field_validator("name")
    @classmethod
    def _known_method(cls, value: str) -> str:
        from honed.train.methods import available_methods

        if value not in available_methods():
            raise ValueError(f"unknown method {value!r}; known: {', '.join(available_methods())}")
        return value


class TrainingConfig(StrictModel):
    """The optimisation loop (transformers Trainer)."""

    epochs: float = Field(3.0, gt=0, description="Passes over the training split.")
    max_steps: int = Field(-1, description="Stop after this many steps (>0 overrides epochs).")
    learning_rate: float = Field(5e-5, gt=0, lt=1, description="Peak learning rate.")
    batch_size: int = Field(16, gt=0, description="Training batch size per device.")
    eval_batch_size: int = Field(64, gt=0, description="Evaluation batch size.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Batches per optimizer step.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_fraction: float = Field(
        0.1, ge=0, lt=1, description="Fraction of optimizer steps spent warming up."
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="Label smoothing of the classification loss (0: off)."
    )
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    early_stopping_patience: int | None = Field(
        3, ge=1, description="Stop after this many evaluations without improvement; null: never."
    )
    metric_for_best_model: str = Field(
        "macro_f1", description="Validation metric that picks the best checkpoint."
    )
    greater_is_better: bool = Field(True, description="Whether a higher metric is better.")
    group_by_length: bool = Field(
        True, description="Batch texts of similar length together (less padding, faster)."
    )
    bf16: Literal["auto", "on", "off"] = Field(
        "off", description="bf16 mixed precision: 'auto' uses it where the hardware supports it."
    )
    packing: bool | Literal["auto"] = Field(
        "auto",
        description="SFT: pack samples into max_length rows without attention across samples "
        "(padding-free). 'auto': on with CUDA, off on CPU, where each packed row pays "
        "max_length^2 attention through a dense block-diagonal mask and length-grouped padded "
        "batches trained 1.42x faster (bench/sft_speed.py, with and without --packing).",
    )
    gradient_checkpointing: bool | None = Field(
        None,
        description="Recompute activations in backward (sft, grpo): less memory, slower "
        "(~13-30%). Unset: the task decides: on for grpo, whose backward runs over every "
        "completion of a step with its whole prompt (examples/rlhf-harmless-grpo.yaml peaked "
        "at 20.8 GB RSS without it, 10.4 GB with it, same metrics), off for sft.",
    )
    chunked_lm_loss: bool = Field(
        True,
        description="Causal LMs in sft and decoder-only seq2seq: compute the loss on supervised "
        "tokens only, 512 at a time, so the (batch, seq, vocabulary) logits never exist "
        "(honed.train.losses). Off: the trainer's own loss.",
    )
    seed: int = Field(42, description="Seed of weights init, shuffling and dropout.")
    logging_steps: int = Field(20, gt=0, description="Log training loss every N steps.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept on disk (best is kept).")
    num_threads: int | None = Field(
        None, gt=0, description="CPU threads for torch; default: torch's own choice."
    )
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig,
        description="Multi-process training (DDP, FSDP, DeepSpeed ZeRO) under torchrun or "
        "`accelerate launch`; `honed launch SPEC` starts it. batch_size stays per process: "
        "the global batch is batch_size x processes x gradient_accumulation_steps.",
    )
