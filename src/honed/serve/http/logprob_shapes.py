"""The OpenAI response shapes of the engine's logprob entries (honed.serve.engine.logprobs):
chat's ``{"content": [...]}`` and the legacy completions' ``{tokens, token_logprobs, ...}``.
They run on the event loop, where the tokenizer decodes ids."""

from __future__ import annotations

import functools
import re
from typing import Any

from honed.serve.engine.logprobs import Entry


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
