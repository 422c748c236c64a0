"""Input and output guards: configured ones (`ServeSettings.guards`) and Python hook lists.

Configured guards (honed.security.guards_config, set by YAML, `HONED_SERVE_GUARDS` or
`--guard` / `--guards-file`) are built once per app into a `GuardSet` (`app.state.guard_set`):

- input kinds (injection, heuristics, pii_input, secrets_input) screen the user-supplied
  texts (chat: the roles in the guard's `roles`, by default user and tool turns) after the
  model is picked and before the request is queued. They run in a worker thread, one after
  another in configured order, so a classifier guard never holds the event loop (/healthz
  keeps answering). `block`: 400 `guard_rejected` naming the guard (later guards do not
  run); `flag`: served; `redact`: the model sees the texts with the spans replaced by tags.
- output kinds (pii_output, secrets_output, canary_token) screen generated text, streamed
  or not (honed.serve.http.output_filter: a look-behind window on streams).
- canary_token also appends its canary to the chat request's system message(s), so a
  model repeating its system prompt is caught by the output check.

Every configured guard's decision (pass | flag | redact | block, score, reason: entity
types and counts, never the matched text) goes to the request-log row (`guards`, stored in
its `extra`) and to `honed_guard_decisions_total{guard,decision,route}`; each guard's time to
`honed_guard_latency_seconds{guard}`.

Hook lists, for guards written in Python: `app.state.input_guards` and
`app.state.output_guards` are plain lists; append callables:

    def no_secrets(ctx: GuardContext) -> None:          # input guard
        if "BEGIN PRIVATE KEY" in " ".join(ctx.texts):
            raise GuardRejection("prompt contains a private key")

    def redact(ctx: GuardContext, text: str) -> str:    # output guard
        return text.replace("secret", "[redacted]")

    app.state.input_guards.append(no_secrets)
    app.state.output_guards.append(redact)

Input hooks run before the configured input guards (a `GuardRejection` answers 400 with code
`guard_rejected`). Output hooks run on each finished choice and on classification labels; a
streamed choice with output hooks installed is held until it finishes, then sent as one
chunk.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from honed.security.guards_config import INPUT_KINDS, GuardConfig, random_canary
from honed.serve.http.errors import APIError
from honed.serve.settings import ServeConfigError


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


# -- configured guards -----------------------------------------------------------------------


@dataclass
class Decision:
    """What one guard decided about one request (a request-log `guards` entry)."""

    name: str
    decision: str  # pass | flag | redact | block
    score: float | None = None
    reason: str | None = None

    def row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "decision": self.decision,
            "score": self.score,
            "reason": self.reason,
        }


@dataclass
class Finding:
    """An input guard's verdict on a request's texts."""

    hit: bool
    score: float | None = None
    reason: str | None = None
    redacted: list[str] | None = None  # the texts with the found spans replaced


def counts(keys: Sequence[str]) -> str:
    """`EMAIL_ADDRESS x2, PHONE_NUMBER x1`: what was found, never the text itself."""
    return ", ".join(f"{k} x{n}" for k, n in sorted(Counter(keys).items()))


def optional_module(name: str, kind: str) -> Any:
    """A honed.security module a guard kind needs (a clear error when it is missing)."""
    try:
        return importlib.import_module(f"honed.security.{name}")
    except ImportError as err:
        raise ServeConfigError(f"guard {kind!r} needs honed.security.{name}: {err}") from None


def warm(find: Callable[..., Any], *args: Any) -> None:
    """One call at start: detectors build their engines on first use (Presidio: seconds),
    which should not be the first request's latency."""
    # a digit and an '@': PII detection skips texts without either, so this one builds it
    find("warm-up text, nothing to find: 0 @", *args)


class _Heuristics:
    def __init__(self, cfg: GuardConfig) -> None:
        self.find = optional_module("injection", cfg.kind).heuristic_findings

    def check(self, texts: list[str]) -> Finding:
        reasons = sorted({r for t in texts for r in self.find(t)})
        return Finding(bool(reasons), None, "; ".join(reasons)[:300] or None)


class _Injection:
    def __init__(self, cfg: GuardConfig) -> None:
        if cfg.model_dir is None or not cfg.model_dir.is_dir():
            raise ServeConfigError(
                f"guard {cfg.label!r}: model_dir {cfg.model_dir} is not a folder"
            )
        detector = optional_module("injection", cfg.kind).InjectionDetector
        self.detector = detector(cfg.model_dir, cfg.threshold, device=cfg.device)
        self.threshold = cfg.threshold

    def check(self, texts: list[str]) -> Finding:
        if not texts:
            return Finding(False)
        score = max(float(s) for s in self.detector.score(texts))
        hit = score >= self.threshold
        why = f"P(injection) {score:.3f} {'>=' if hit else '<'} {self.threshold}"
        return Finding(hit, round(score, 4), why)


class _SpanInput:
    """pii_input / secrets_input: spans found in each text (redacted by their tags)."""

    def __init__(self, cfg: GuardConfig) -> None:
        self.find = span_finder(cfg)

    def check(self, texts: list[str]) -> Finding:
        found = [self.find(t) for t in texts]
        keys = [key for spans in found for *_, key in spans]
        redacted = [
            replace_spans(t, [(a, b, tag) for a, b, tag, _ in spans])
            for t, spans in zip(texts, found, strict=True)
        ]
        return Finding(bool(keys), None, counts(keys) or None, redacted)


RawSpan = tuple[int, int, str, str]  # start, end, tag, key (entity type, secret kind, canary)


def span_finder(cfg: GuardConfig, canary: str | None = None) -> Callable[[str], list[RawSpan]]:
    """The detector of a span kind (PII, secrets, the canary), warmed up once."""
    if cfg.kind.startswith("pii_"):
        pii = optional_module("pii", cfg.kind)
        entities = tuple(cfg.entities) if cfg.entities else pii.STRUCTURED
        warm(pii.find_pii, entities, cfg.min_score)
        return lambda t: [
            (s.start, s.end, pii.TAGS.get(s.entity, f"[{s.entity}]"), s.entity)
            for s in pii.find_pii(t, entities, cfg.min_score)
        ]
    if cfg.kind.startswith("secrets_"):
        secrets = optional_module("secrets", cfg.kind)
        warm(secrets.find_secrets)
        return lambda t: [(s.start, s.end, "[SECRET]", s.kind) for s in secrets.find_secrets(t)]
    return lambda t: _occurrences(t, canary or "")


def replace_spans(text: str, spans: Sequence[tuple[int, int, str]]) -> str:
    """`text` with each non-overlapping (start, end, tag) replaced by its tag."""
    out, last = [], 0
    for start, end, tag in sorted(spans):
        if start < last:  # overlaps the previous span: already replaced
            continue
        out += [text[last:start], tag]
        last = end
    out.append(text[last:])
    return "".join(out)


class Span(NamedTuple):
    start: int
    end: int
    tag: str  # what replaces it when redacted
    guard: int  # index of the check that found it
    key: str  # what it is (entity type, secret kind, "canary"), for the decision's reason


class OutputCheck:
    """One configured output guard: spans of a text."""

    def __init__(self, cfg: GuardConfig, canary: str | None) -> None:
        self.cfg = cfg
        self.action = cfg.verb
        self._find = span_finder(cfg, canary)

    def spans(self, text: str, index: int) -> list[Span]:
        return [Span(a, b, tag, index, key) for a, b, tag, key in self._find(text)]


def _occurrences(text: str, needle: str) -> list[RawSpan]:
    out, at = [], text.find(needle) if needle else -1
    while at >= 0:
        out.append((at, at + len(needle), "", "canary"))
        at = text.find(needle, at + len(needle))
    return out


_INPUT_CHECKS: dict[str, Callable[[GuardConfig], Any]] = {
    "heuristics": _Heuristics,
    "injection": _Injection,
    "pii_input": _SpanInput,
    "secrets_input": _SpanInput,
}


@dataclass
class _InputGuard:
    cfg: GuardConfig
    check: Callable[[list[str]], Finding]

    def screened(self, texts: list[str], roles: list[str] | None) -> list[int]:
        """Indexes of the texts this guard screens."""
        if roles is None:
            return list(range(len(texts)))
        return [i for i, role in enumerate(roles) if role in self.cfg.roles]


class GuardSet:
    """The configured guards of one app, built at start (models loaded once)."""

    def __init__(self, configs: Sequence[GuardConfig]) -> None:
        self.inputs = [
            _InputGuard(c, _INPUT_CHECKS[c.kind](c).check) for c in configs if c.kind in INPUT_KINDS
        ]
        self.outputs = [c for c in configs if c.is_output]
        canary = next((c for c in configs if c.kind == "canary_token"), None)
        self.canary = (canary.canary or random_canary()) if canary else None
        self.output_checks = [OutputCheck(c, self.canary) for c in self.outputs]
        # Streams hold back the widest window, and never less than the canary's length.
        self.window = max([c.window_chars for c in self.outputs], default=0)
        self.window = max(self.window, len(self.canary or ""))

    def __bool__(self) -> bool:
        return bool(self.inputs or self.outputs)

    def screen(
        self, texts: list[str], roles: list[str] | None
    ) -> tuple[list[str], list[tuple[Decision, float]]]:
        """Run the input guards in order (blocking call: a worker thread runs it); the texts
        the model gets and (decision, seconds) per guard that ran. Stops at a block."""
        texts = list(texts)
        out: list[tuple[Decision, float]] = []
        for guard in self.inputs:
            idx = guard.screened(texts, roles)
            started = time.perf_counter()
            found = guard.check([texts[i] for i in idx])
            took = time.perf_counter() - started
            verdict = guard.cfg.verb if found.hit else "pass"
            out.append((Decision(guard.cfg.label, verdict, found.score, found.reason), took))
            if verdict == "block":
                break
            if verdict == "redact" and found.redacted is not None:
                for i, new in zip(idx, found.redacted, strict=True):
                    texts[i] = new
        return texts, out


def build_guard_set(configs: Sequence[GuardConfig]) -> GuardSet | None:
    return GuardSet(configs) if configs else None


def record(tracker: Any, decisions: list[tuple[Decision, float]]) -> None:
    """Decisions into the request's log row (`tracker.guards`) and the metrics."""
    m = tracker.state.metrics
    for d, took in decisions:
        tracker.guards.append(d.row())
        m.guard_decisions.labels(d.name, d.decision, tracker.route).inc()
        m.guard_latency.labels(d.name).observe(took)


def insert_canary(messages: list[dict[str, Any]], canary: str) -> None:
    """Append the canary to each system message (none: nothing to leak, nothing added)."""
    for m in messages:
        if m.get("role") == "system":
            m["content"] = f"{m.get('content') or ''}\n\n(reference: {canary})"


async def screen_inputs(tracker: Any, texts: list[str], roles: list[str] | None) -> list[str]:
    """Run the configured input guards off the event loop; the texts the model gets. A
    blocking guard's decision answers 400 `guard_rejected` naming it."""
    guards: GuardSet | None = getattr(tracker.state, "guard_set", None)
    if guards is None or not guards.inputs:
        return texts
    new, decisions = await asyncio.to_thread(guards.screen, texts, roles)
    record(tracker, decisions)
    blocked = next((d for d, _ in decisions if d.decision == "block"), None)
    if blocked is not None:
        raise APIError(
            400,
            f"request refused by guard {blocked.name!r}: {blocked.reason or 'flagged'}",
            code="guard_rejected",
        )
    return new


def check_logprobs(guards: GuardSet | None, k: int | None) -> None:
    """Logprobs name every generated token: with output guards they would show what the
    guards redact or block, so the two are not served together."""
    if guards is not None and guards.outputs and k is not None:
        raise APIError(
            400,
            "logprobs are not available on this server: its output guards would be bypassed",
            param="logprobs",
        )
