"""Request and response bodies, OpenAI-compatible where OpenAI defines them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_MAX_STOPS = 4
StopString = Annotated[str, Field(min_length=1, max_length=256)]


class _Request(BaseModel):
    # Unknown fields are refused with their name, so a typo is not silently ignored.
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class StreamOptions(_Request):
    include_usage: bool = Field(False, description="Send a last chunk with token usage.")


class _Sampling(_Request):
    model: str = Field(..., min_length=1, max_length=256, description="Base or adapter id.")
    max_tokens: int | None = Field(None, ge=1, description="New tokens per choice.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    n: int = Field(1, ge=1, le=64, description="Choices per prompt.")
    stream: bool = Field(False, description="Server-sent events, one chunk per token.")
    stream_options: StreamOptions | None = None
    stop: StopString | list[StopString] | None = Field(
        None, max_length=_MAX_STOPS, description="Up to 4 stop strings."
    )
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Sampling seed.")
    user: str | None = Field(None, max_length=256, description="End-user id (logged only).")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        return [value] if isinstance(value, str) else list(value or [])


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant"] = Field(..., description="Who said it.")
    content: str = Field(..., description="The text.")
    name: str | None = Field(None, max_length=64, description="Optional speaker name.")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1, description="The conversation.")


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1)] = Field(
        ..., description="One prompt or a (non-empty) list of prompts."
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "honed"
    root: str = Field(..., description="The model this id runs on (the base for adapters).")
    parent: str | None = Field(None, description="For adapters: the base model id.")
    kind: Literal["generate", "adapter", "classify"]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ClassifyRequest(_Request):
    model: str = Field(..., min_length=1, max_length=256, description="Classifier id.")
    input: str | Annotated[list[str], Field(min_length=1)] = Field(
        ..., description="One text or a (non-empty) list of texts."
    )


class Classification(BaseModel):
    index: int
    label: str
    score: float
    scores: dict[str, float]


class ClassifyUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Classification]
    usage: ClassifyUsage


class AdapterLoadRequest(_Request):
    name: str = Field(
        ..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", description="Adapter id in the API."
    )
    source: str = Field(
        ..., min_length=1, max_length=1024, description="Adapter folder or registry ref."
    )
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="Expected sha256 of adapter_model.safetensors; refused when it differs.",
    )


class AdapterInfo(BaseModel):
    name: str
    parent: str
    source: str
    sha256: str


class AdapterDeleted(BaseModel):
    name: str
    deleted: bool = True


class Health(BaseModel):
    status: str
    models: list[str] = Field(default_factory=list)
    detail: str | None = None
