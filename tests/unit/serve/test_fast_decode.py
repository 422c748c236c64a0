"""The static compiled decode path gives plain `generate`'s greedy tokens: alone, left-padded
in a batch, handed between the static and the dynamic cache in a running batch, and over HTTP."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from tests.unit.serve import _serve_support
from tests.unit.serve._serve_support import plain_greedy, run_app, tiny_llm

from honed.errors import ModelError
from honed.models.fast_decode import StaticDecoder, fast_generate, use_static
from honed.serve.engine import loading
from honed.serve.engine.continuous import RunningBatch
from honed.serve.engine.generation import GenJob, SamplingParams
from honed.serve.settings import ServeSettings

PROMPTS = ["the quick brown fox jumps over the lazy dog", "hello", "profits rose sharply"]


@pytest.fixture(scope="module")
def base(tiny):
    return tiny_llm(tiny)


def test_fast_generate_gives_generates_greedy_tokens(base):
    model, tok = base
    for prompts in (PROMPTS[:1], PROMPTS):  # batch 1, and rows of different lengths
        enc = tok(prompts, return_tensors="pt", padding=True)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        eos = model.generation_config.eos_token_id
        fast = fast_generate(model, ids, 12, mask, eos_token_id=eos, pad_token_id=0)
        assert fast.tolist() == plain_greedy(model, ids, mask, 12).tolist()


def _job(tok, text: str, max_tokens: int) -> GenJob:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    return GenJob(
        tok(text)["input_ids"], params, None, time.monotonic() + 60, asyncio.new_event_loop()
    )


@pytest.mark.parametrize("fused", [True, False], ids=["fused-step", "compiled-step"])
def test_a_lone_row_decodes_static_and_hands_over_when_others_join(base, fused):
    model, tok = base
    lengths = [10, 10, 14]  # the last row decodes its last tokens alone
    jobs = [_job(tok, p, n) for p, n in zip(PROMPTS, lengths, strict=True)]
    solo = StaticDecoder(model, 1, 256, fused=fused)
    batch = RunningBatch(model, tok, "cpu", mixed=False, solo=solo)
    batch.decoder.eos_ids = set()  # compare raw greedy tokens, eos included
    batch.admit(jobs[0].rows)
    batch.step()
    batch.step()
    assert batch.solo_live  # alone: on the static cache
    batch.admit(jobs[1].rows + jobs[2].rows)  # others join: back to the dynamic cache
    assert not batch.solo_live and batch.cache.layers[0].keys.shape[0] == 3
    batch.step()
    went_back = False
    while batch.rows:
        batch.step()
        went_back |= batch.solo_live  # the last row left decodes static again
        batch.evict()
    assert went_back
    for job, text, n in zip(jobs, PROMPTS, lengths, strict=True):
        ids = torch.tensor([tok(text)["input_ids"]])
        want = plain_greedy(model, ids, torch.ones_like(ids), n)[0, ids.shape[1] :].tolist()
        assert job.rows[0].tokens == want, text


def test_static_on_a_model_with_adapters_needs_the_fused_step(base, monkeypatch):
    """The fused CPU step decodes LoRA rows; the compiled one cannot: without the fused step,
    'static' on a model with adapters is a clear error and 'auto' stays eager."""
    from peft import LoraConfig, get_peft_model

    model, _ = base
    lora = get_peft_model(_copy(model), LoraConfig(r=2, target_modules=["q_proj"]))
    assert use_static("static", lora) is use_static("auto", lora) is True
    monkeypatch.setenv("HONED_FUSED_DECODE", "0")
    with pytest.raises(ModelError, match="LoRA adapters"):
        use_static("static", lora)
    assert use_static("auto", lora) is False
    monkeypatch.delenv("HONED_FUSED_DECODE")
    assert use_static("eager", model) is False
    assert use_static("auto", model) is True


def _copy(model):
    import copy

    return copy.deepcopy(model)


@pytest.mark.parametrize("continuous", [True, False], ids=["continuous", "per-batch"])
def test_the_server_answers_the_same_on_both_paths(tiny, continuous, monkeypatch):
    # Compiling at warm-up takes a while on a busy 2-core machine: wait longer for ready.
    ready = _serve_support.wait_ready
    monkeypatch.setattr(_serve_support, "wait_ready", lambda app: ready(app, timeout=600))
    body = {"model": "base", "prompt": "hello world", "max_tokens": 12, "temperature": 0}

    async def ask(client, app):
        r = await client.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"], app.state.engine.generator.solo

    texts = {}
    for decode in ("eager", "static"):
        settings = ServeSettings(
            models=[f"base={tiny['base']}"],
            max_wait_ms=2.0,
            decode=decode,
            continuous_batching=continuous,
        )
        texts[decode], solo = run_app(settings, ask)
        assert (solo is not None) == (decode == "static")
    assert texts["static"] == texts["eager"]


@pytest.mark.slow
def test_smollm2_fast_generate_matches_generate():
    model = loading.load_causal_lm(
        loading.resolve_folder("packaged:smollm2-135m-instruct"), "cpu", torch.float32
    )
    tok = loading.load_tokenizer(loading.resolve_folder("packaged:smollm2-135m-instruct"), "left")
    eos = model.generation_config.eos_token_id
    questions = ["List three colours.", "Tell me a joke about databases.", "hello"]
    chats = [[{"role": "user", "content": q}] for q in questions]
    prompts = ["Write a short note about the quarterly results:", "hello"]
    prompts += tok.apply_chat_template(chats, tokenize=False, add_generation_prompt=True)
    for batch in ([p] for p in prompts):  # batch 1: the fused step (where the CPU has AVX2)
        enc = tok(batch, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        fast = fast_generate(model, ids, 48, mask, eos_token_id=eos, pad_token_id=0)
        assert fast.tolist() == plain_greedy(model, ids, mask, 48).tolist(), batch
    assert next(iter(model._honed_decoders.values())).fused is not None


def test_the_gemv_route_changes_no_module_type_state_or_eager_result():
    """The static step's one-row products are reductions only while torch.compile traces:
    eager calls, module types and state dicts stay as they were; subclasses keep theirs."""
    from honed.models.fast_decode import _use_gemv

    class Quantized(torch.nn.Linear):  # stands in for bitsandbytes' Linear4bit
        pass

    model = torch.nn.Sequential(torch.nn.Linear(8, 4), Quantized(4, 2)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 1, 8)
    expected = model(x)
    _use_gemv(model)
    assert "forward" in model[0].__dict__ and "forward" not in model[1].__dict__
    assert [type(m) for m in model] == [torch.nn.Linear, Quantized]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x), expected)  # eager: F.linear, bit for bit
    compiled = torch.compile(model, dynamic=False)
    with torch.inference_mode():
        assert torch.allclose(compiled(x), expected, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-step", "compiled-step"])
def test_an_adapter_attached_mid_decode_keeps_a_lone_base_row_right(base, tiny, fused):
    """The server wraps the model in peft when its first adapter arrives, between two steps
    of a running batch. The lone base row stays on the fused step (base weights, as bound),
    or leaves the compiled one (traced without LoRA layers) for the eager mixed path; either
    way its tokens are the base model's."""
    from peft import PeftModel

    model, tok = base
    model = _copy(model)
    job = _job(tok, PROMPTS[0], 14)
    want = plain_greedy(model, *tok([PROMPTS[0]], return_tensors="pt").values(), 14)
    batch = RunningBatch(model, tok, "cpu", mixed=False, solo=StaticDecoder(model, 1, 64, fused))
    batch.decoder.eos_ids = set()
    batch.admit(job.rows)
    for _ in range(4):
        batch.step()
    assert batch.solo_live
    peft = PeftModel.from_pretrained(model, str(tiny["adapters"][0]), adapter_name="a0").eval()
    batch.model, batch.mixed = peft, True  # what GenerativeModel._attach does
    batch.step()
    assert batch.solo_live is fused
    while batch.rows:
        batch.step()
        batch.evict()
    assert job.rows[0].tokens == want[0, -14:].tolist()
