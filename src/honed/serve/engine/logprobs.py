"""Per-row logit adjustments (frequency/presence penalties, logit_bias) and logprobs, shared by
the continuous engine (``continuous.RunningBatch._sample``) and the static one (a logits
processor in ``generation.run_batch``). The HTTP layer shapes the entries into OpenAI's
response bodies (honed.serve.http.logprob_shapes).

Penalties follow OpenAI: each row's logits lose ``presence_penalty * (count > 0) +
frequency_penalty * count`` for every token that row has generated so far (the prompt does not
count). A row with no penalty and no bias is left untouched: its output is bit-identical to a
request that never named these fields.

Logprobs are the log-softmax of the logits after this request's penalties and logit_bias and
before temperature and top-p: the model's distribution as the request shaped it, independent of
how it is then sampled (OpenAI likewise reports the same numbers at any temperature).
"""

from __future__ import annotations

from typing import Protocol

import torch

# (token id, logprob, ((id, logprob), ...) the k most likely at that position)
Entry = tuple[int, float, tuple[tuple[int, float], ...]]
_FLOOR = -9999.0  # OpenAI's stand-in for -inf (JSON has no infinities)


# What this module reads of generation.SamplingParams / GenJob / Row, as protocols:
# generation imports this module, so importing it back would be a cycle.
class _Params(Protocol):
    frequency_penalty: float
    presence_penalty: float
    logit_bias: tuple[tuple[int, float], ...]
    logprobs: int | None


class _Job(Protocol):
    params: _Params


class _Row(Protocol):
    job: _Job
    tokens: list[int]


def shapes_logits(params: _Params) -> bool:
    return bool(params.frequency_penalty or params.presence_penalty or params.logit_bias)


def wants_processing(rows: list[_Row]) -> bool:
    """Whether any row needs its logits adjusted or its logprobs recorded."""
    return any(shapes_logits(r.job.params) or r.job.params.logprobs is not None for r in rows)


def adjust_logits(logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
    """(B, V) logits with each row's logit_bias added and penalties subtracted (a copy when
    anything changes; the same tensor when no row asks for it)."""
    todo = [i for i, r in enumerate(rows) if shapes_logits(r.job.params)]
    if not todo:
        return logits
    logits = logits.clone()
    vocab = logits.shape[-1]
    for i in todo:
        p, tokens = rows[i].job.params, rows[i].tokens
        if p.logit_bias:
            ids = torch.tensor([t for t, _ in p.logit_bias], device=logits.device)
            bias = torch.tensor([b for _, b in p.logit_bias], dtype=logits.dtype)
            logits[i, ids] += bias.to(logits.device)
        if (p.frequency_penalty or p.presence_penalty) and tokens:
            seen = torch.tensor(tokens, device=logits.device)
            counts = torch.bincount(seen, minlength=vocab)[:vocab].to(logits.dtype)
            logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
    return logits


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, rows: list[_Row]) -> list:
    """Per row: the chosen token's Entry, or None where the request did not ask for logprobs.
    ``logits`` (B, V) as adjusted by ``adjust_logits``; ``tokens`` (B,) the tokens chosen."""
    out: list[Entry | None] = [None] * len(rows)
    want = [i for i, r in enumerate(rows) if r.job.params.logprobs is not None]
    if not want:
        return out
    lp = torch.log_softmax(logits[want].float(), -1)  # (w, V)
    chosen = tokens[want].to(lp.device)
    picked = lp.gather(1, chosen[:, None])[:, 0].tolist()
    k = max(rows[i].job.params.logprobs or 0 for i in want)
    top_v, top_i = lp.topk(k, -1) if k else (lp[:, :0], lp[:, :0].long())
    top_v, top_i = top_v.tolist(), top_i.tolist()
    for j, i in enumerate(want):
        kk = rows[i].job.params.logprobs or 0
        top = tuple(zip(top_i[j][:kk], map(_finite, top_v[j][:kk]), strict=True))
        out[i] = (int(chosen[j]), _finite(picked[j]), top)
    return out


def _finite(x: float) -> float:
    return max(x, _FLOOR)
