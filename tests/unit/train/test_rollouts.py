"""honed's GRPO rollout loop (honed.train.rollouts): a prompt's cache shared by its group gives
`generate`'s greedy tokens, sampled log-probs are the model's, top-k / top-p follow
`generate`'s warpers, completions end at EOS, and TRL's trainer takes it as rollout_func."""

from __future__ import annotations

import pytest
import torch
from transformers import TopKLogitsWarper, TopPLogitsWarper

from honed.serve.engine import loading
from honed.train.rollouts import (
    Sampling,
    _runs,
    prompt_token_ids,
    sample_groups,
    sample_tokens,
    unsupported_by_rollouts,
)

PROMPTS = ["the quick brown fox jumps over the lazy dog", "hello", "profits rose sharply"]


@pytest.fixture(scope="module")
def base(tiny):
    model = loading.load_causal_lm(tiny["base"], "cpu", torch.float32)
    return model, loading.load_tokenizer(tiny["base"], "left")


def _ids(tok) -> list[list[int]]:
    return [tok(p)["input_ids"] for p in PROMPTS]


def test_greedy_groups_give_generates_tokens_for_every_copy(base):
    model, tok = base
    prompts = _ids(tok)
    completions, logps = sample_groups(
        model, prompts, [2, 1, 3], 10, eos_ids=[], pad_id=0, sampling=Sampling(temperature=0)
    )
    assert len(completions) == 6 and all(len(c) == 10 for c in completions)
    expected = []
    for prompt in prompts:
        with torch.inference_mode():
            out = model.generate(
                input_ids=torch.tensor([prompt]), max_new_tokens=10, do_sample=False, pad_token_id=0
            )
        expected.append(out[0, len(prompt) :].tolist())
    assert completions == [expected[0]] * 2 + [expected[1]] + [expected[2]] * 3
    assert all(lp <= 0 for row in logps for lp in row)


def test_sampled_log_probs_are_the_models(base):
    """Each returned log-prob equals log softmax(logits / T) of a full forward pass."""
    model, tok = base
    prompts = _ids(tok)[:2]
    gen = torch.Generator().manual_seed(0)
    completions, logps = sample_groups(
        model, prompts, 3, 6, eos_ids=[], pad_id=0, sampling=Sampling(0.7), generator=gen
    )
    rows = [p for p in prompts for _ in range(3)]
    assert len({tuple(c) for c in completions}) > 1  # sampling, not greedy
    for prompt, completion, got in zip(rows, completions, logps, strict=True):
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].float()
        want = torch.log_softmax(logits[len(prompt) - 1 : -1] / 0.7, -1)
        want = want.gather(-1, torch.tensor(completion)[:, None]).squeeze(1)
        assert torch.allclose(torch.tensor(got), want, atol=1e-4)


def test_completions_end_at_their_first_eos(base):
    model, tok = base
    prompts = _ids(tok)
    first, _ = sample_groups(model, prompts, 1, 8, [], 0, Sampling(temperature=0))
    eos = first[0][2]  # prompt 0's third greedy token stands in for an EOS
    cut, logps = sample_groups(model, prompts, 1, 8, [eos], 0, Sampling(temperature=0))
    for full, got, lp in zip(first, cut, logps, strict=True):
        end = full.index(eos) + 1 if eos in full else len(full)
        assert got == full[:end] and len(lp) == len(got)


@pytest.mark.parametrize("sampling", [Sampling(1.0, top_k=3), Sampling(1.0, top_p=0.6)])
def test_top_k_and_top_p_keep_what_generates_warpers_keep(sampling):
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    warper = TopKLogitsWarper(sampling.top_k) if sampling.top_k else TopPLogitsWarper(0.6)
    allowed = torch.isfinite(warper(None, logits.clone()))
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        token, logp = sample_tokens(logits, sampling, gen)
        assert allowed.gather(1, token[:, None]).all() and (logp <= 0).all()


def test_runs_group_consecutive_repeats_only():
    a, b = [{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]
    assert _runs([a, a, b, b, b, a]) == ([a, b, a], [2, 3, 1])


def test_chat_prompts_tokenise_as_the_template_renders_them(base):
    _, tok = base
    chat = [{"role": "user", "content": "hello"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert prompt_token_ids(tok, chat) == tok(text, add_special_tokens=False)["input_ids"]
    assert prompt_token_ids(tok, "hello") == tok("hello")["input_ids"]


def test_what_falls_back_to_trl():
    class Args:
        min_p, repetition_penalty, use_vllm, fsdp = None, 1.0, False, ""

    assert unsupported_by_rollouts(Args()) is None
    args = Args()
    args.repetition_penalty = 1.1
    assert "repetition" in unsupported_by_rollouts(args)
    args = Args()
    args.fsdp = "full_shard"
    assert "FSDP" in unsupported_by_rollouts(args)
