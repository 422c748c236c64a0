"""What the engine refuses, in its own terms (models, adapters, queues); nothing of HTTP.

The HTTP layer maps each kind to a status and an OpenAI-shaped error body
(`honed.serve.http.errors.from_engine`): InvalidRequest 400, NotFound 404, Conflict 409,
QueueFull 503 with Retry-After.
"""

from __future__ import annotations


class EngineError(Exception):
    """A request the engine cannot serve; the message is meant for the client."""

    def __init__(self, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code  # a stable machine-readable code, or None
        self.param = param  # the request field at fault, when one is


class InvalidRequest(EngineError):
    """The request asks a model for what it cannot do (the wrong kind of model, an adapter
    that does not fit the base)."""


class NotFound(EngineError):
    """No model or adapter by that id."""

    def __init__(self, what: str, name: str) -> None:
        super().__init__(f"{what} {name!r} does not exist", code="not_found")


class Conflict(EngineError):
    """The request conflicts with how the engine is set up (merged adapters, a taken name,
    no generative base)."""


class QueueFull(EngineError):
    """The model's queue is at max_queue; the caller should retry later."""

    def __init__(self, model: str) -> None:
        super().__init__(f"the queue of {model!r} is full", code="overloaded")
        self.model = model
