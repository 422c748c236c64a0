"""Hook points for input and output guards (prompt-injection screening, output sanitising).

`app.state.input_guards` and `app.state.output_guards` are plain lists; append callables:

    def no_secrets(ctx: GuardContext) -> None:          # input guard
        if "BEGIN PRIVATE KEY" in " ".join(ctx.texts):
            raise GuardRejection("prompt contains a private key")

    def redact(ctx: GuardContext, text: str) -> str:    # output guard
        return text.replace("secret", "[redacted]")

    app.state.input_guards.append(no_secrets)
    app.state.output_guards.append(redact)

Input guards run before a request is queued (a `GuardRejection` answers 400 with code
`guard_rejected`). Output guards run on each finished choice of non-streaming responses and on
classification labels; streamed tokens are not passed through output guards (a streaming
request with output guards installed is generated fully, then sent as one chunk).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from honed.serve.http.errors import APIError


class GuardRejection(Exception):
    """Raised by an input guard; the message is returned to the client."""


@dataclass(frozen=True)
class GuardContext:
    route: str  # "chat" | "completions" | "classify"
    model: str
    texts: list[str]  # the user-supplied texts (messages' contents, prompts, inputs)
    api_key: str | None = None  # the key's name, never the key
    extra: dict[str, Any] = field(default_factory=dict)


InputGuard = Callable[[GuardContext], None]
OutputGuard = Callable[[GuardContext, str], str]


def run_input_guards(guards: list[InputGuard], ctx: GuardContext) -> None:
    for guard in guards:
        try:
            guard(ctx)
        except GuardRejection as err:
            raise APIError(400, f"request refused: {err}", code="guard_rejected") from None


def run_output_guards(guards: list[OutputGuard], ctx: GuardContext, text: str) -> str:
    for guard in guards:
        text = guard(ctx, text)
    return text
