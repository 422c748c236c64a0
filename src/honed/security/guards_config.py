"""Guards the server runs on inputs and outputs, as typed settings (`ServeSettings.guards`).

Set them in the YAML `serve:` section, as JSON in `HONED_SERVE_GUARDS`, or with flags
(`--guard KIND[:ACTION[:MODEL_DIR]]`, repeatable, and `--guards-file FILE`):

    serve:
      guards:
        - {kind: heuristics, action: flag}
        - {kind: injection, action: block, model_dir: runs/injection-guard/model, threshold: 0.8}
        - {kind: pii_input, action: redact}
        - {kind: pii_output}              # redact, the default for output kinds
        - {kind: secrets_output}
        - {kind: canary_token}            # block, with a random per-process canary

Input kinds screen the user-supplied texts before a request is queued (`block`: 400
`guard_rejected` naming the guard; `flag`: served, decision logged; `redact`: the PII or
secret spans are replaced by tags before the model sees them). Output kinds screen generated
text, streamed or not (`redact`: spans replaced by tags; `block`: the choice stops with
`finish_reason: "content_filter"`; `flag`: sent unchanged, decision logged).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from honed.errors import HonedError

GuardKind = Literal[
    "injection",
    "heuristics",
    "pii_input",
    "secrets_input",
    "pii_output",
    "secrets_output",
    "canary_token",
]
GuardAction = Literal["block", "flag", "redact"]

INPUT_KINDS = frozenset({"injection", "heuristics", "pii_input", "secrets_input"})
OUTPUT_KINDS = frozenset({"pii_output", "secrets_output", "canary_token"})
# Kinds whose findings are spans of text (so they can be replaced by a tag).
_REDACTABLE = frozenset({"pii_input", "secrets_input", "pii_output", "secrets_output"})
_DEFAULT_ACTION: dict[str, GuardAction] = {
    "injection": "block",
    "heuristics": "block",
    "pii_input": "redact",
    "secrets_input": "block",
    "pii_output": "redact",
    "secrets_output": "redact",
    "canary_token": "block",
}


class GuardConfigError(HonedError):
    """A guard setting is invalid (unknown kind, action, missing model folder...)."""


class GuardConfig(BaseModel):
    """One guard. Its `name` labels decisions in the request log, the metrics and the 400
    body; two guards of one kind need distinct names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: GuardKind = Field(
        ...,
        description="injection (a honed-trained classifier), heuristics (override phrases, "
        "role tokens, invisible Unicode, encoded payloads), pii_input / secrets_input "
        "(inputs), pii_output / secrets_output (generated text), canary_token (system-prompt "
        "leakage).",
    )
    action: GuardAction | None = Field(
        None,
        description="block | flag | redact (redact only for pii_* and secrets_*). Default: "
        "redact for pii_input and the output PII/secret kinds, block otherwise.",
    )
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Label in logs and metrics (default: the kind).",
    )
    model_dir: Path | None = Field(
        None, description="injection: the classifier folder (`honed run` output or registry)."
    )
    threshold: float = Field(
        0.5, gt=0, lt=1, description="injection: block/flag when P(injection) >= this."
    )
    device: str = Field("cpu", description="injection: where the classifier runs.")
    entities: list[str] | None = Field(
        None,
        description="pii_*: Presidio entity types to find (default: the structured ones, "
        "honed.security.pii.STRUCTURED).",
    )
    min_score: float = Field(0.5, ge=0, le=1, description="pii_*: minimum detector score.")
    roles: list[str] = Field(
        default_factory=lambda: ["user", "tool"],
        description="Input kinds, chat: the message roles screened (system and assistant "
        "turns are the application's own text). Completion prompts and classify inputs are "
        "always screened.",
    )
    canary: str | None = Field(
        None,
        min_length=8,
        description="canary_token: the string appended to chat system prompts and looked for "
        "in outputs (default: a random one per server process).",
    )
    window_chars: int = Field(
        64,
        ge=8,
        le=4096,
        description="Output kinds, streams: characters held back before they are sent, so a "
        "span split across tokens is found whole (entities longer than this may leak in "
        "part when streamed; non-streamed answers are screened whole).",
    )

    @model_validator(mode="after")
    def _check(self) -> GuardConfig:
        if self.action == "redact" and self.kind not in _REDACTABLE:
            raise ValueError(f"guard {self.kind!r}: action 'redact' is only for pii/secrets kinds")
        if self.kind == "injection" and self.model_dir is None:
            raise ValueError("guard 'injection' needs model_dir (the trained classifier folder)")
        return self

    @property
    def label(self) -> str:
        return self.name or self.kind

    @property
    def verb(self) -> GuardAction:
        return self.action or _DEFAULT_ACTION[self.kind]

    @property
    def is_output(self) -> bool:
        return self.kind in OUTPUT_KINDS


def check_names(guards: list[GuardConfig]) -> list[GuardConfig]:
    """Refuse two guards with one label (their decisions could not be told apart)."""
    seen: set[str] = set()
    for g in guards:
        if g.label in seen:
            raise ValueError(f"two guards are named {g.label!r}; give one a `name`")
        seen.add(g.label)
    return guards


def random_canary() -> str:
    """A per-process canary: random, so no model or user can know it in advance."""
    return f"HONED-CANARY-{secrets.token_hex(8)}"


def parse_guard_flag(value: str) -> GuardConfig:
    """`KIND[:ACTION[:MODEL_DIR]]` (the CLI's `--guard`), e.g. `injection:block:runs/guard`."""
    kind, _, rest = value.partition(":")
    action, _, model_dir = rest.partition(":")
    raw: dict[str, object] = {"kind": kind}
    if action:
        raw["action"] = action
    if model_dir:
        raw["model_dir"] = model_dir
    try:
        return GuardConfig.model_validate(raw)
    except ValidationError as err:
        raise GuardConfigError(f"--guard {value!r}: {_first(err)}") from None


def load_guards_file(path: Path) -> list[GuardConfig]:
    """A YAML or JSON file holding a list of guards (or `{guards: [...]}`)."""
    if not path.is_file():
        raise GuardConfigError(f"guards file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())  # JSON is YAML too
    except yaml.YAMLError as err:
        raise GuardConfigError(f"guards file {path} is not valid YAML/JSON: {err}") from None
    if isinstance(data, dict):
        data = data.get("guards")
    try:
        return check_names(TypeAdapter(list[GuardConfig]).validate_python(data or []))
    except (ValidationError, ValueError) as err:
        why = _first(err) if isinstance(err, ValidationError) else str(err)
        raise GuardConfigError(f"guards file {path}: {why}") from None


def _first(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    return f"{loc}: {e['msg']}" if loc else e["msg"]
