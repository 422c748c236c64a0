"""Per-row logit adjustments (frequency/presence penalties, logit_bias) and logprobs, shared by
the continuous engine (``continuous.RunningBatch._sample``) and the static one (a logits
processor in ``generation.run_batch``), then shaped for the OpenAI responses.

Penalties follow OpenAI: each row's logits lose ``presence_penalty * (count > 0) +
frequency_penalty * count`` for every token that row has generated so far (the prompt does not
count). A row with no penalty and no bias is left untouched: its output is bit-identical to a
request that never named these fields.

Logprobs are the log-softmax of the logits after this request's penalties and logit_bias and
before temperature and top-p: the model's distribution as the request shaped it, independent of
how it is then sampled (OpenAI likewise reports the same numbers at any temperature).
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from honed.serve.generation import Row, SamplingParams

# (token id, logprob, ((id, logprob), ...) the k most likely at that position)
Entry = tuple[int, float, tuple[tuple[int, float], ...]]
_FLOOR = -9999.0  # OpenAI's stand-in for -inf (JSON has no infinities)


def shapes_logits(params: SamplingParams) -> bool:
    return bool(params.frequency_penalty or params.presence_penalty or params.logit_bias)


def wants_processing(rows: list[Row]) -> bool:
    """Whether any row needs its logits adjusted or its logprobs recorded."""
    return any(shapes_logits(r.job.params) or r.job.params.logprobs is not None for r in rows)


def adjust_logits(logits: torch.Tensor, rows: list[Row]) -> torch.Tensor:
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


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, rows: list[Row]) -> list:
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


# -- response shapes (run on the event loop, where the tokenizer decodes ids) ----------------
def _token(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)


_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def token_bytes(tokenizer: Any, token_id: int, text: str) -> list[int]:
    """The token's own bytes. A token holding part of a UTF-8 character decodes to U+FFFD;
    its bytes then come from the vocabulary piece (byte-level BPE's printable-byte alphabet,
    or sentencepiece's <0xNN> byte fallback)."""
    if "\ufffd" not in text:
        return list(text.encode("utf-8"))
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if (m := _BYTE_FALLBACK.match(piece or "")) is not None:
        return [int(m.group(1), 16)]
    decoder = _byte_decoder()
    if piece and all(c in decoder for c in piece):
        return [decoder[c] for c in piece]
    return list(text.encode("utf-8"))


@functools.cache
def _byte_decoder() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


def chat_logprobs(tokenizer: Any, entries: list[Entry]) -> dict[str, Any]:
    """OpenAI chat shape: {"content": [{token, logprob, bytes, top_logprobs: [...]}], ...}."""

    def one(token_id: int, logprob: float) -> dict[str, Any]:
        text = _token(tokenizer, token_id)
        return {"token": text, "logprob": logprob, "bytes": token_bytes(tokenizer, token_id, text)}

    content = [
        {**one(t, lp), "top_logprobs": [one(a, b) for a, b in top]} for t, lp, top in entries
    ]
    return {"content": content, "refusal": None}


def completion_logprobs(
    tokenizer: Any, entries: list[Entry], offset: int = 0
) -> tuple[dict[str, Any], int]:
    """Legacy completions shape {tokens, token_logprobs, top_logprobs, text_offset}, and the
    offset after the last token. Offsets count characters of the completion text from
    ``offset`` (0 = the completion's start; the prompt is not echoed). Each top_logprobs dict
    holds the k most likely tokens plus the chosen one, as OpenAI's does."""
    tokens, offsets, tops = [], [], []
    for t, lp, top in entries:
        text = _token(tokenizer, t)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        best = {_token(tokenizer, a): b for a, b in top}
        best.setdefault(text, lp)
        tops.append(best)
    body = {
        "tokens": tokens,
        "token_logprobs": [lp for _, lp, _ in entries],
        "top_logprobs": tops,
        "text_offset": offsets,
    }
    return body, offset
