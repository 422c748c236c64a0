"""The fused C++ decode step (honed.models.cpu_decode): the compiled step's logits and plain
`generate`'s greedy tokens, on any thread count, with the model's current weights, and a
clear way out wherever it cannot run."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.unit.serve._serve_support import plain_greedy, tiny_llm

from honed.models import cpu_decode
from honed.models.cpu_decode import fused_unsupported
from honed.models.fast_decode import StaticDecoder, fast_generate

PROMPTS = ["the quick brown fox jumps over the lazy dog", "hello", "profits rose sharply"]

pytestmark = pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"), reason="needs AVX2"
)


@pytest.fixture(scope="module")
def base(tiny):
    return tiny_llm(tiny)


def _steps(decoder: StaticDecoder, ids: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """(n, V) logits of n greedy steps after the prompt."""
    out = []
    with torch.inference_mode():
        logits = decoder.prefill(ids, mask)
        for _ in range(n):
            logits = decoder.step(logits.argmax(-1))
            out.append(logits[0])
    return torch.stack(out)


def test_the_fused_step_gives_the_compiled_steps_logits_and_generates_tokens(base):
    model, tok = base
    for text in PROMPTS:
        enc = tok([text], return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        fused = StaticDecoder(model, 1, 64)
        assert fused.fused is not None, fused_unsupported(model, 1)
        compiled = StaticDecoder(model, 1, 64, fused=False)
        got, want = _steps(fused, ids, mask, 16), _steps(compiled, ids, mask, 16)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        eos = model.generation_config.eos_token_id
        fast = fast_generate(model, ids, 20, mask, eos_token_id=eos, pad_token_id=0)
        assert fast.tolist() == plain_greedy(model, ids, mask, 20).tolist(), text


def test_a_left_padded_lone_row_decodes_like_generate(base):
    model, tok = base
    ids = tok(["profits rose sharply"], return_tensors="pt")["input_ids"]
    ids = torch.cat([torch.zeros((1, 3), dtype=torch.long), ids], 1)
    mask = (torch.arange(ids.shape[1]) >= 3).long()[None]  # three pad columns on the left
    eos = model.generation_config.eos_token_id
    fast = fast_generate(model, ids, 12, mask, eos_token_id=eos, pad_token_id=0)
    assert fast.tolist() == plain_greedy(model, ids, mask, 12).tolist()


def test_the_thread_count_does_not_change_a_bit(base):
    """Each row's dot product and each head's attention run on one thread in one order."""
    model, tok = base
    enc = tok(["hello"], return_tensors="pt")
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            runs.append(_steps(StaticDecoder(model, 1, 64), *enc.values(), 8))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(runs[0], runs[1])


def test_weights_changed_between_generations_are_the_ones_decoded(base):
    """GRPO trains the policy between rollouts: in place (optimizer steps) or by a new
    tensor (load_state_dict(assign=True)); each prefill takes the weights as they are."""
    model, tok = base
    model = copy.deepcopy(model)
    enc = tok(["hello"], return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    fast_generate(model, ids, 8, mask, eos_token_id=None)  # binds the first weights
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(3.0)  # in place
        layer = model.model.layers[1].self_attn.q_proj
        layer.weight.data = torch.randn_like(layer.weight)  # a new storage
    eos = model.generation_config.eos_token_id
    fast = fast_generate(model, ids, 12, mask, eos_token_id=eos, pad_token_id=0)
    assert fast.tolist() == plain_greedy(model, ids, mask, 12).tolist()


def test_a_full_cache_is_refused_without_writing(base):
    model, _ = base
    decoder = StaticDecoder(model, 1, 8)
    ids = torch.arange(3, 11)[None]  # 8 tokens: every column in use
    with torch.inference_mode():
        decoder.prefill(ids, torch.ones_like(ids))
        keys = decoder.cache.layers[0].keys.clone()
        with pytest.raises(ValueError, match="cache is full"):
            decoder.fused(5, 8, decoder.mask)
        decoder.cache.layers[0].cumulative_length.fill_(7)  # room for one more column
        with pytest.raises(ValueError, match="token 99999 or position 7 out of range"):
            decoder.fused(99999, 7, decoder.mask)
        decoder.cache.layers[0].cumulative_length.fill_(8)
    assert torch.equal(decoder.cache.layers[0].keys, keys)
    assert int(decoder.cache.layers[0].cumulative_length) == 8


def test_where_it_cannot_run_it_says_why_and_the_compiled_step_takes_over(base, monkeypatch):
    from transformers import LlamaForCausalLM

    model, _ = base
    assert "batches" in fused_unsupported(model, 2)
    assert "float32" in fused_unsupported(copy.deepcopy(model).to(torch.bfloat16), 1)
    gelu = LlamaForCausalLM(
        model.config.__class__(**{**model.config.to_dict(), "hidden_act": "gelu"})
    )
    assert "non-SiLU" in fused_unsupported(gelu, 1)
    monkeypatch.setenv("HONED_FUSED_DECODE", "0")
    assert "HONED_FUSED_DECODE" in fused_unsupported(model, 1)
    assert StaticDecoder(model, 1, 64).fused is None
    monkeypatch.delenv("HONED_FUSED_DECODE")
    cpu_decode._library.cache_clear()
    monkeypatch.setenv("CXX", "/bin/false")  # a compiler that fails: the build error is named
    try:
        assert "did not build" in fused_unsupported(model, 1)
        decoder = StaticDecoder(model, 1, 64)
        assert decoder.fused is None and decoder._step is not None
    finally:
        cpu_decode._library.cache_clear()


def test_a_step_built_ahead_of_time_loads_without_a_compiler(base, tmp_path, monkeypatch):
    """deploy/Dockerfile builds the step in its build stage; the runtime stage has no g++."""
    model, _ = base
    cpu_decode.main([str(tmp_path)])
    assert cpu_decode.prebuilt(tmp_path).exists()
    monkeypatch.setattr(cpu_decode, "PREBUILT_DIR", tmp_path)
    monkeypatch.setenv("CXX", "/bin/false")  # would fail if anything were compiled
    cpu_decode._library.cache_clear()
    try:
        assert fused_unsupported(model, 1) is None
        assert cpu_decode._library()[0]._name == str(cpu_decode.prebuilt(tmp_path))
    finally:
        cpu_decode._library.cache_clear()


@pytest.fixture(scope="module")
def with_adapters(tiny):
    from peft import PeftModel

    model, tok = tiny_llm(tiny)
    first, *rest = tiny["adapters"]
    model = PeftModel.from_pretrained(model, str(first), adapter_name="a0")
    for i, path in enumerate(rest, 1):
        model.load_adapter(str(path), adapter_name=f"a{i}")
    return model.eval(), tok


def _decode_alone(model, tok, adapter, solo, n: int = 12, expect_solo: bool = True) -> list[int]:
    import asyncio
    import time

    from honed.serve.engine.continuous import RunningBatch
    from honed.serve.engine.generation import GenJob, SamplingParams

    params = SamplingParams(max_tokens=n, temperature=0.0)
    job = GenJob(
        tok("profits rose")["input_ids"], params, adapter, time.monotonic() + 60,
        asyncio.new_event_loop(),
    )  # fmt: skip
    batch = RunningBatch(model, tok, "cpu", mixed=True, solo=solo)
    batch.decoder.eos_ids = set()
    batch.admit(job.rows)
    went_solo = False
    while batch.rows:
        batch.step()
        went_solo |= batch.solo_live
        batch.evict()
    assert went_solo == (solo is not None and expect_solo)
    return job.rows[0].tokens


def test_a_lone_lora_row_decodes_on_the_fused_step_as_eagerly(with_adapters):
    """Each adapter (and the base) on its own: the same greedy tokens as the eager mixed
    path, and different from each other (the LoRA terms are applied)."""
    model, tok = with_adapters
    solo = StaticDecoder(model, 1, 64)
    assert solo.fused is not None and solo.takes("a1", True)
    got = {a: _decode_alone(model, tok, a, solo) for a in (None, "a0", "a1", "a2")}
    want = {a: _decode_alone(model, tok, a, None) for a in got}
    assert got == want
    assert len({tuple(v) for v in got.values()}) == 4


def test_lora_the_fused_step_cannot_run_decodes_eagerly(with_adapters):
    from peft import LoraConfig

    model, tok = with_adapters
    model.add_adapter("dora", LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    model.add_adapter("head", LoraConfig(r=2, target_modules=["lm_head"]))
    try:
        solo = StaticDecoder(model, 1, 64)
        assert not solo.takes("dora", True) and not solo.takes("head", True)
        assert "DoRA" in cpu_decode.adapter_unsupported(model, "dora")
        assert "lm_head" in cpu_decode.adapter_unsupported(model, "head")
        assert StaticDecoder(model, 1, 64, fused=False).takes(None, True) is False
        assert _decode_alone(model, tok, "head", solo, expect_solo=False)  # answered eagerly
    finally:
        model.delete_adapter("dora")
        model.delete_adapter("head")


def _variant(kind: str, vocab: int):
    """Tiny random decoders the fused step also covers: Qwen2 (q/k/v biases) and a Llama
    with every bias on (attention_bias, mlp_bias)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    shape = dict(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**shape)).eval()
    cfg = LlamaConfig(**shape, attention_bias=True, mlp_bias=True)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # biases start at zero: make them count
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("kind", ["qwen2", "llama-biases"])
def test_other_layer_variants_match_the_compiled_step_and_generate(base, kind):
    _, tok = base
    model = _variant(kind, len(tok))
    assert fused_unsupported(model, 1) is None
    enc = tok(["the quick brown fox"], return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    fused, compiled = StaticDecoder(model, 1, 64), StaticDecoder(model, 1, 64, fused=False)
    assert fused.fused is not None
    torch.testing.assert_close(
        _steps(fused, ids, mask, 8), _steps(compiled, ids, mask, 8), rtol=1e-5, atol=1e-5
    )
    fast = fast_generate(model, ids, 12, mask, eos_token_id=None)
    want = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=12,
        do_sample=False, pad_token_id=0,
    )  # fmt: skip
    assert fast.tolist() == want.tolist()
