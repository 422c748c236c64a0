"""The OpenAI request fields beyond the basics: which are refused, how aliases resolve, how
chat messages reach the chat template, how token-array prompts are checked.

Every field the official ``openai`` client can send is honoured, accepted and ignored (it
would not change the answer here), or refused by this module with a 400 naming the field;
docs/serving.md has the table. Fields OpenAI does not define stay refused by the schema.
"""

from __future__ import annotations

from typing import Any

from honed.serve.http.errors import APIError
from honed.serve.http.response_format import JsonFormat
from honed.serve.http.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    _Sampling,
)

# Set to anything but null, these are refused: the server has no tools, audio, web search,
# predicted outputs, reasoning controls or moderation to apply them with.
_REFUSED = (
    "tools",
    "functions",
    "audio",
    "prediction",
    "web_search_options",
    "reasoning_effort",
    "verbosity",
    "moderation",
)


def unsupported(param: str, what: str | None = None) -> APIError:
    return APIError(
        400,
        f"{what or param} is not supported by this server",
        param=param,
        code="unsupported_parameter",
    )


def check_fields(body: _Sampling) -> None:
    """Refuse, naming the field, what this server cannot honour."""
    if isinstance(body, ChatCompletionRequest):
        _check_chat(body)
    elif isinstance(body, CompletionRequest):
        _check_completion(body)


def _check_chat(body: ChatCompletionRequest) -> None:
    for name in _REFUSED:
        if getattr(body, name) not in (None, []):
            raise unsupported(name)
    for name in ("tool_choice", "function_call"):
        value = getattr(body, name)
        if value not in (None, "none"):
            raise unsupported(name, f'{name} other than "none" (tools are not supported)')
    JsonFormat.from_request(body.response_format)  # 400 for a type or schema not honoured
    if body.modalities is not None and set(body.modalities) - {"text"}:
        raise unsupported("modalities", f"modalities {body.modalities} (text only)")
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    _check_messages(body.messages)


def _check_messages(messages: list[ChatMessage]) -> None:
    for i, m in enumerate(messages):
        for name in ("function_call", "audio"):
            if getattr(m, name) is not None:
                raise unsupported(f"messages.{i}.{name}")


def _check_completion(body: CompletionRequest) -> None:
    if body.echo:
        raise unsupported("echo", "echo: true")
    if body.best_of is not None and body.best_of != body.n:
        raise unsupported("best_of", "best_of other than n (no server-side ranking)")
    if body.suffix:
        raise unsupported("suffix")


def max_tokens(body: _Sampling) -> int | None:
    """max_completion_tokens is OpenAI's newer name for max_tokens: either, or both if equal."""
    newer = getattr(body, "max_completion_tokens", None)
    if newer is not None and body.max_tokens is not None and newer != body.max_tokens:
        raise APIError(
            400,
            f"max_tokens ({body.max_tokens}) and max_completion_tokens ({newer}) differ; "
            "send one of them",
            param="max_completion_tokens",
        )
    return newer if newer is not None else body.max_tokens


def logprobs_k(body: _Sampling) -> int | None:
    """How many top alternatives per token (None: no logprobs asked)."""
    if isinstance(body, ChatCompletionRequest):
        return (body.top_logprobs or 0) if body.logprobs else None
    return getattr(body, "logprobs", None)


def logit_bias(body: _Sampling, vocab: int) -> tuple[tuple[int, float], ...]:
    """{"token id": bias} as ((id, bias), ...), every id checked against the vocabulary."""
    out = []
    for key, bias in (body.logit_bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise APIError(
                400, f"logit_bias key {key!r} is not a token id", param="logit_bias"
            ) from None
        check_ids([token], vocab, "logit_bias")
        out.append((token, float(bias)))
    return tuple(out)


def check_ids(ids: list[int], vocab: int, param: str) -> None:
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise APIError(
            400, f"{param}: token id {bad} is outside the vocabulary (0..{vocab - 1})", param=param
        )


def token_prompts(prompt: Any) -> list[list[int]] | None:
    """Token-array prompts as a list of id lists; None when the prompt is text."""
    if isinstance(prompt, str) or isinstance(prompt[0], str):
        return None
    if isinstance(prompt[0], int):
        return [list(prompt)]
    return [list(p) for p in prompt]


def template_messages(messages: list[ChatMessage], tokenizer: Any) -> list[dict[str, Any]]:
    """Messages as the chat template takes them (``chat_messages``), refused when they hold
    what this model's template cannot render (``check_template``)."""
    check_template(messages, tokenizer)
    return chat_messages(messages)


def chat_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as plain dicts: text parts joined, developer as system."""
    out = []
    for m in messages:
        one: dict[str, Any] = {
            "role": "system" if m.role == "developer" else m.role,
            "content": m.text,
        }
        for name in ("name", "tool_calls", "tool_call_id"):
            if getattr(m, name) is not None:
                one[name] = getattr(m, name)
        out.append(one)
    return out


def check_template(messages: list[ChatMessage], tokenizer: Any) -> None:
    """Tool results and assistant tool calls go through only when the template renders them."""
    template = str(getattr(tokenizer, "chat_template", None) or "")
    for i, m in enumerate(messages):
        if m.role == "tool" and "'tool'" not in template and '"tool"' not in template:
            raise APIError(
                400,
                f"messages.{i}: role 'tool' is not supported by this model's chat template",
                param=f"messages.{i}.role",
            )
        if m.tool_calls and "tool_calls" not in template:
            raise APIError(
                400,
                f"messages.{i}: tool_calls are not supported by this model's chat template",
                param=f"messages.{i}.tool_calls",
            )
