"""QLoRA on CPU: NF4 + double quant + bf16 compute, and the AVX512-bf16 eval-mode trap."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("bitsandbytes")

from tests.tiny_cases.sft import save_base

from honed.train.config import MethodConfig
from honed.train.methods import get_method


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return save_base(tmp_path_factory.mktemp("qlora_base"))


def _qlora_model(folder: Path):
    from transformers import AutoModelForCausalLM

    method = get_method("qlora")
    cfg = MethodConfig(name="qlora", lora={"r": 4, "alpha": 8, "dropout": 0.0})
    model = AutoModelForCausalLM.from_pretrained(str(folder), **method.load_kwargs(cfg))
    return method.prepare(model, cfg, "CAUSAL_LM")


def test_load_kwargs_nf4_double_quant_bf16() -> None:
    q = get_method("qlora").load_kwargs(MethodConfig(name="qlora"))["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4"
    assert q.bnb_4bit_use_double_quant and q.bnb_4bit_compute_dtype == torch.bfloat16


def test_optim_paged_on_cuda_only() -> None:
    expected = "paged_adamw_32bit" if torch.cuda.is_available() else "adamw_torch"
    assert get_method("qlora").optim() == expected


def test_every_lora_matrix_gets_gradient_after_eval_pass(tiny_llama: Path) -> None:
    import bitsandbytes as bnb

    torch.manual_seed(0)
    model = _qlora_model(tiny_llama)
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linears and all(not m.support_avx512bf16_for_cpu for m in linears)
    # LoRA B starts at zero, which zeroes A's gradient by construction: give B a value.
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    ids = torch.randint(4, 40, (2, 12))  # (batch, seq)
    model.eval()
    with torch.no_grad():  # what evaluation and generate do: eval mode, no grad
        model(input_ids=ids)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(lora) == 2 * 7 * 2  # A and B, 7 projections, 2 layers
    missing = [n for n, p in lora.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient after an eval pass: {missing[:4]}"


def test_base_linear_weights_are_4bit(tiny_llama: Path) -> None:
    import bitsandbytes as bnb

    model = _qlora_model(tiny_llama)
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            # Two 4-bit values per byte: storage is a quarter of bf16's bytes.
            assert module.weight.numel() * 2 == module.in_features * module.out_features
