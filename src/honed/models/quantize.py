"""4-bit loading of a base model (bitsandbytes NF4/FP4), shared by QLoRA training and by loading
a QLoRA adapter's base for evaluation, merging and serving.

CPU trap (bitsandbytes 0.50): on CPUs with AVX512-bf16, a ``Linear4bit`` forward in eval mode
without grad (evaluation, ``generate``) repacks its weight into a CPU-only layout and from then
on uses a kernel that has no backward: later training steps silently get no gradient through
that layer, and a model loaded for inference gets different kernels than the one trained.
``disable_cpu_repack`` turns that fast path off on every ``Linear4bit``.
"""

from __future__ import annotations

from typing import Any

from honed.errors import HonedError, ModelError
from honed.models.config import QuantParams

#: Heads stay in full precision: they are new (trained through modules_to_save) or tiny, and
#: BERT's pooler feeds the classifier directly.
SKIP_MODULES = ["lm_head", "classifier", "score", "pooler"]


def require_bitsandbytes() -> None:
    from honed.quiet import allow_bitsandbytes

    allow_bitsandbytes()  # the CLI keeps it unimported until QLoRA needs it
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise HonedError(
            "method 'qlora' needs bitsandbytes (4-bit NF4 weights): pip install bitsandbytes"
        ) from None


def four_bit_load_kwargs(params: QuantParams) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that load the base quantized to 4 bits."""
    import torch
    from transformers import BitsAndBytesConfig

    require_bitsandbytes()
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=params.quant_type,
            bnb_4bit_use_double_quant=params.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, params.compute_dtype),
            llm_int8_skip_modules=SKIP_MODULES,
        )
    }


def disable_cpu_repack(model: Any) -> int:
    """Turn off bitsandbytes' CPU inference repacking on every Linear4bit; returns how many."""
    require_bitsandbytes()
    import bitsandbytes as bnb

    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def quantize_int8(model: Any, device: str = "cpu", dtype: Any = None) -> Any:
    """Int8 quantization of the encoder's Linear layers for inference; the classification head
    stays float32 so scores keep their calibration.

    On CPUs without VNNI, honed's own kernel (``honed.models.cpu_encoder.Int8Linear``: 7-bit
    weights per output channel, activations per token; 1.2-1.8x torch's int8 Linear there);
    elsewhere, and for any layer it does not fit, torch's dynamic quantization (weights int8
    per tensor, activations per batch).

    Why the eager `torch.ao` API although torch marks it deprecated in favour of torchao: its
    fbgemm/oneDNN kernels use VNNI directly (1.5x bf16, 2.7x float32 per core on MiniLM here),
    while torchao's int8 path needs torch.compile on CPU to be fast (130 s of compilation at
    start-up for no gain when tried on this stack).
    """
    import warnings

    import torch

    from honed.models import cpu_encoder

    if not device.startswith("cpu"):
        raise ModelError(f"int8 classifier quantization runs on CPU only, not {device!r}")
    if dtype not in (None, torch.float32):
        raise ModelError("int8 classifier quantization needs float32 weights: drop --dtype")
    encoder = getattr(model, model.base_model_prefix)
    if cpu_encoder.int8_unsupported() is None:
        cpu_encoder.quantize_linears(encoder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice, on every start
        torch.ao.quantization.quantize_dynamic(  # what the kernel left (or everything)
            encoder, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
        )
    return model
