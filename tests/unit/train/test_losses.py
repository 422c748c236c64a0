"""The chunked supervised-token loss equals the model's own loss, in value and gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from honed.train import losses


def _tiny_llama(**over) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        **over,
    )
    return LlamaForCausalLM(cfg).train()


def _batch(b: int = 2, seq: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(3, 97, (b, seq))  # (b, seq)
    labels = ids.clone()
    labels[:, : seq // 2] = -100  # the prompt half is not supervised
    labels[0, -3:] = -100  # and some padding at the end of one row
    return ids, labels


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("num_items", [None, 17])
def test_value_and_gradients_match_the_models_loss(num_items):
    model = _tiny_llama()
    ids, labels = _batch()
    mask = torch.ones_like(ids)
    n = torch.tensor(num_items) if num_items else None
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}

    want = model(**inputs, num_items_in_batch=n).loss
    want.backward()
    want_grads = _grads(model)
    model.zero_grad(set_to_none=True)

    got = losses.supervised_lm_loss(model, inputs, n)
    got.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    got_grads = _grads(model)
    assert got_grads.keys() == want_grads.keys()
    for name, g in got_grads.items():
        torch.testing.assert_close(g, want_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_chunks_smaller_than_the_batch_give_the_same_sum():
    model = _tiny_llama()
    ids, labels = _batch(b=3, seq=40)
    hidden = model.model(input_ids=ids).last_hidden_state
    whole, n = losses.chunked_ce_sum(hidden, model.lm_head, labels, chunk=10_000)
    chunked, m = losses.chunked_ce_sum(hidden, model.lm_head, labels, chunk=7)
    assert n == m == int((labels[:, 1:] != -100).sum())
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-5)


def test_packed_rows_with_position_ids_match():
    """Padding-free packing: one row, two sequences, position_ids restart at the boundary."""
    model = _tiny_llama()
    ids = torch.randint(3, 97, (1, 20))
    labels = ids.clone()
    labels[0, :4] = -100
    labels[0, 10:14] = -100  # the second sequence's prompt (and its first token)
    pos = torch.cat([torch.arange(10), torch.arange(10)]).unsqueeze(0)
    inputs = {"input_ids": ids, "position_ids": pos, "labels": labels}
    # Without a KV cache transformers masks packed sequences block-diagonally (as SFT trains).
    want = model(**inputs, use_cache=False).loss
    got = losses.supervised_lm_loss(model, inputs)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_peft_model_uses_the_base_and_trains_lora_only():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ids, labels = _batch()
    loss = losses.supervised_lm_loss(model, {"input_ids": ids, "labels": labels})
    loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained and all("lora_" in n for n in trained)


def test_models_with_scaled_logits_fall_back():
    assert losses.supports_chunked_loss(_tiny_llama())
    capped = _tiny_llama()
    capped.config.final_logit_softcapping = 30.0
    assert not losses.supports_chunked_loss(capped)
    routed = _tiny_llama()
    routed.config.output_router_logits = True
    assert not losses.supports_chunked_loss(routed)


def test_sft_trains_with_the_chunked_loss_unless_turned_off(tmp_path):
    from tests.tiny_cases.sft import build_spec
    from trl import SFTTrainer

    from honed.train.tasks.sft import trainer_class

    spec = build_spec(tmp_path)
    assert issubclass(trainer_class(spec), losses.ChunkedLossMixin)
    off = spec.model_copy(
        update={"training": spec.training.model_copy(update={"chunked_lm_loss": False})}
    )
    assert trainer_class(off) is SFTTrainer
    smooth = spec.training.model_copy(update={"label_smoothing": 0.1})
    assert trainer_class(spec.model_copy(update={"training": smooth})) is SFTTrainer


def test_with_chunked_loss_wraps_any_trainer_class():
    from transformers import Seq2SeqTrainer

    from honed.train.config import TrainingConfig

    wrapped = losses.with_chunked_loss(Seq2SeqTrainer, TrainingConfig())
    assert issubclass(wrapped, losses.ChunkedLossMixin) and issubclass(wrapped, Seq2SeqTrainer)
    # the mixin's compute_loss runs first
    assert wrapped.compute_loss is losses.ChunkedLossMixin.compute_loss
    off = TrainingConfig(chunked_lm_loss=False)
    assert losses.with_chunked_loss(Seq2SeqTrainer, off) is Seq2SeqTrainer
