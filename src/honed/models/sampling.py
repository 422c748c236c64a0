"""Token sampling and prompt padding shared by the server's engine, the static decode path and
the GRPO rollout loop (honed.train.rollouts): one place for how a token is drawn."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def left_pad(
    prompts: list[list[int]], pad_id: int, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T), prompts right-aligned for decoder-only models."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


@dataclass(frozen=True)
class Sampling:
    """How tokens are drawn: ``temperature`` 0 is greedy; ``top_k`` 0 and ``top_p`` 1 are off."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


def sample_tokens(
    logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V) float logits -> (B,) tokens and their (B,) log-probs under the sampling
    distribution (after temperature, top-k and top-p)."""
    if sampling.temperature == 0:
        token = logits.argmax(-1)
        return token, torch.log_softmax(logits, -1).gather(-1, token[:, None]).squeeze(1)
    scores = logits / sampling.temperature
    if sampling.top_k > 0:
        kth = torch.topk(scores, min(sampling.top_k, scores.shape[-1]), -1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if sampling.top_p < 1.0:
        # generate's TopPLogitsWarper: drop the tokens whose mass, counted from the least
        # likely up, stays within 1 - top_p (the most likely token always stays).
        ordered, order = torch.sort(scores, descending=False)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative <= 1 - sampling.top_p
        drop[:, -1] = False
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    logp = torch.log_softmax(scores, -1)
    token = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
    return token, logp.gather(-1, token[:, None]).squeeze(1)
