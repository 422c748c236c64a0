"""Request and response bodies, OpenAI-compatible where OpenAI defines them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

_MAX_STOPS = 4
StopString = Annotated[str, Field(min_length=1, max_length=256)]


class _Request(BaseModel):
    # Unknown fields are refused with their name, so a typo is not silently ignored.
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class StreamOptions(_Request):
    include_usage: bool = Field(False, description="Send a last chunk with token usage.")
    include_obfuscation: bool | None = Field(
        None, description="Accepted and ignored: chunks are never padded (OpenAI only)."
    )


# Fields OpenAI defines whose answer this server cannot give: accepted in the schema so the
# official client's requests validate, refused with a 400 naming the field when set to anything
# but "off" (honed.serve.http.openai_fields.check_fields). Null always means "not set".
Unsupported = Annotated[Any, Field(description="Refused unless null (see docs/serving.md).")]
# Fields that do not change the answer here: accepted and ignored.
Ignored = Annotated[Any, Field(description="Accepted and ignored (no effect here).")]


class _Sampling(_Request):
    model: str = Field(..., min_length=1, max_length=256, description="Base or adapter id.")
    max_tokens: int | None = Field(None, ge=1, description="New tokens per choice.")
    temperature: float | None = Field(1.0, ge=0.0, le=2.0, description="0 = greedy.")
    top_p: float | None = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    n: int | None = Field(1, ge=1, le=64, description="Choices per prompt.")
    stream: bool | None = Field(False, description="Server-sent events, one chunk per token.")
    stream_options: StreamOptions | None = None
    stop: StopString | list[StopString] | None = Field(
        None, max_length=_MAX_STOPS, description="Up to 4 stop strings."
    )
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Sampling seed.")
    user: str | None = Field(None, max_length=256, description="End-user id (ignored).")
    frequency_penalty: float | None = Field(
        0.0, ge=-2.0, le=2.0, description="Subtract penalty x count of each token generated so far."
    )
    presence_penalty: float | None = Field(
        0.0, ge=-2.0, le=2.0, description="Subtract penalty from each token generated so far."
    )
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        None, max_length=300, description="Token id (as a string) -> bias added to its logit."
    )

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        return [value] if isinstance(value, str) else list(value or [])

    @field_validator("temperature", "top_p", "n", "stream", "frequency_penalty", "presence_penalty")
    @classmethod
    def _null_is_default(cls, value: Any, info: ValidationInfo) -> Any:
        # The official client may send an explicit null; it means "the default".
        return cls.model_fields[info.field_name].default if value is None else value


class TextPart(_Request):
    type: Literal["text"]
    text: str
    prompt_cache_breakpoint: Ignored = None


def _text_parts(value: Any) -> Any:
    """Content-part arrays: text parts pass; any other part type is refused by name."""
    if isinstance(value, list):
        for part in value:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                raise ValueError(
                    f"content part type {kind!r} is not supported: this server takes text only"
                )
    return value


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"] = Field(
        ..., description="Who said it (developer is treated as system)."
    )
    content: Annotated[str | list[TextPart] | None, BeforeValidator(_text_parts)] = Field(
        ..., description="The text, or a list of text parts (joined with newlines)."
    )
    name: str | None = Field(None, max_length=64, description="Optional speaker name.")
    tool_calls: list[dict[str, Any]] | None = Field(
        None, description="Assistant only: earlier tool calls (if the chat template has them)."
    )
    tool_call_id: str | None = Field(None, description="Tool messages: the call answered.")
    refusal: Ignored = None
    function_call: Unsupported = None
    audio: Unsupported = None

    @model_validator(mode="after")
    def _roles(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content may be null only on an assistant message with tool_calls")
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"tool_calls belong to assistant messages, not {self.role!r}")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        return self

    @property
    def text(self) -> str:
        """The content as one string (text parts joined with newlines, as vLLM does)."""
        if isinstance(self.content, list):
            return "\n".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1, description="The conversation.")
    max_completion_tokens: int | None = Field(
        None, ge=1, description="OpenAI's newer name for max_tokens."
    )
    logprobs: bool | None = Field(False, description="Return each output token's logprob.")
    top_logprobs: int | None = Field(
        None, ge=0, le=20, description="With logprobs: the k most likely tokens per position."
    )
    response_format: dict[str, Any] | None = Field(
        None,
        description='{"type": "text"}, {"type": "json_object"} or {"type": "json_schema", '
        '"json_schema": {"name": ..., "schema": {...}}}: JSON answers are validated before '
        "they leave (422 when the model's answer does not match).",
    )
    tool_choice: Any = Field(None, description='"none" only (tools are not supported).')
    parallel_tool_calls: Ignored = None
    store: Ignored = None
    metadata: Ignored = None
    service_tier: Ignored = None
    prompt_cache_key: Ignored = None
    prompt_cache_retention: Ignored = None
    prompt_cache_options: Ignored = None
    safety_identifier: Ignored = None
    modalities: list[str] | None = Field(None, description='["text"] only.')
    function_call: Any = Field(None, description='"none" only (functions are not supported).')
    tools: Unsupported = None
    functions: Unsupported = None
    audio: Unsupported = None
    prediction: Unsupported = None
    web_search_options: Unsupported = None
    reasoning_effort: Unsupported = None
    verbosity: Unsupported = None
    moderation: Unsupported = None


TokenIds = Annotated[list[Annotated[int, Field(strict=True)]], Field(min_length=1)]


class CompletionRequest(_Sampling):
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1)]
    ) = Field(
        ...,
        description="One prompt, a (non-empty) list of prompts, token ids, or lists of ids.",
    )
    logprobs: int | None = Field(
        None, ge=0, le=5, description="Return each token's logprob and the k most likely."
    )
    echo: bool | None = Field(False, description="false only (echo is not supported).")
    best_of: int | None = Field(None, ge=1, description="Equal to n (or unset) only.")
    suffix: str | None = Field(None, description="Unset or empty only.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "content_filter"] | None
    logprobs: ChatLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length", "content_filter"] | None
    logprobs: CompletionLogprobs | None = None


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
    id: str = Field(..., description="The request id (also in X-Request-Id); feedback names it.")
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
