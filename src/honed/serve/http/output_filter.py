"""Output screening: configured output guards, Python output hooks and `response_format`,
on whole answers and on streams.

A streamed choice goes through a `ChoiceStream`: configured guards (PII, secrets, canary) see
the text not yet sent and release only what is at least `window_chars` behind the newest
token, cut after a whitespace (a run without whitespace is cut anyway once it is 4 windows
long). A span found across the cut moves the cut before it, so an e-mail split over several
token deltas is found whole; the rest is screened and sent when the choice finishes. The
answer is never buffered whole for these guards (time to first token grows by about one
window). What must see the whole answer holds the choice until it finishes: a
`response_format` schema (validated before the text leaves) and Python output hooks.

Actions on what a configured guard finds: `redact` replaces the span by its tag (`[EMAIL]`,
`[SECRET]`); `block` ends the choice there with `finish_reason: "content_filter"` (text
before the span, already screened, stays sent; a whole answer is replaced by ""); `flag`
sends it unchanged. Decisions are recorded once per request and guard (`record`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from honed.serve.http.guards import Decision, GuardSet, Span, counts, record, replace_spans
from honed.serve.http.response_format import JsonFormat

_WHITESPACE = " \n\t\r"
_MIN_RELEASE = 16  # characters


@dataclass
class _Tally:
    """Per check: what it found and acted on over the request, and its time."""

    keys: list[str] = field(default_factory=list)
    blocked: bool = False
    seconds: float = 0.0


class OutputScreen:
    """Per request: everything between a generated choice and the client."""

    def __init__(
        self,
        guards: GuardSet | None,
        hooks: Callable[[str], str] | None = None,
        fmt: JsonFormat | None = None,
    ) -> None:
        self.checks = guards.output_checks if guards else []
        self.window = guards.window if guards else 0
        self.hooks = hooks
        self.fmt = fmt
        self.tally = [_Tally() for _ in self.checks]
        self.recorded = False

    @property
    def heavy(self) -> bool:
        """Worth a worker thread (detectors run; the canary alone is a substring search)."""
        return any(c.cfg.kind != "canary_token" for c in self.checks) or self.fmt is not None

    @property
    def holds_whole(self) -> bool:
        return self.hooks is not None or self.fmt is not None

    # -- finding and applying spans -------------------------------------------------------
    def find(self, text: str) -> list[Span]:
        spans: list[Span] = []
        for i, check in enumerate(self.checks):
            started = time.perf_counter()
            spans += check.spans(text, i)
            self.tally[i].seconds += time.perf_counter() - started
        return sorted(spans)

    def apply(self, text: str, spans: list[Span]) -> tuple[str, bool]:
        """`text` (all of `spans` inside it) with redact spans replaced; cut before the first
        block span (True: the choice is blocked)."""
        for s in spans:
            self.tally[s.guard].keys.append(s.key)
        stop = next((s for s in spans if self.checks[s.guard].action == "block"), None)
        if stop is not None:
            self.tally[stop.guard].blocked = True
            text, spans = text[: stop.start], [s for s in spans if s.end <= stop.start]
        redact = [(s.start, s.end, s.tag) for s in spans if self.checks[s.guard].action == "redact"]
        return replace_spans(text, redact), stop is not None

    # -- whole answers ----------------------------------------------------------------------
    def whole(self, index: int, text: str) -> tuple[str, bool]:
        """A finished choice: (the text to send, blocked). Raises APIError (422) when it
        does not match the response_format."""
        blocked = False
        if self.checks:
            text, blocked = self.apply(text, self.find(text))
        if self.fmt is not None and not blocked:
            self.fmt.check(text, index)
        if self.hooks is not None:
            text = self.hooks(text)
        return text, blocked

    def label(self, text: str) -> str:
        """A classification label: the Python hooks only (labels come from a fixed set)."""
        return self.hooks(text) if self.hooks is not None else text

    def stream(self, index: int) -> ChoiceStream:
        return ChoiceStream(self, index)

    # -- decisions --------------------------------------------------------------------------
    def decisions(self) -> list[tuple[Decision, float]]:
        out = []
        for check, t in zip(self.checks, self.tally, strict=True):
            verdict = "pass"
            if t.keys:
                verdict = "block" if t.blocked else check.action
            reason = counts(t.keys) or None
            out.append((Decision(check.cfg.label, verdict, None, reason), t.seconds))
        return out

    def record(self, tracker: Any) -> None:
        """Once per request: decisions into the log row and the metrics."""
        if self.recorded or not self.checks:
            return
        self.recorded = True
        record(tracker, self.decisions())


class ChoiceStream:
    """One streamed choice: `feed` each delta, `end` at its finish; each returns the text
    (and logprob entries) that may be sent now."""

    def __init__(self, screen: OutputScreen, index: int) -> None:
        self.screen = screen
        self.index = index
        self.pending = ""  # received, not yet screened and sent
        self.held = ""  # screened, held for a whole-answer check
        self.entries: list = []
        self.blocked = False

    def feed(self, delta: str, entries: list) -> tuple[str, list]:
        if self.blocked:
            return "", []
        if not self.screen.checks:
            out = delta
        else:
            self.pending += delta
            out = self._release(self._cut())
        return self._pass_on(out, entries)

    def end(self) -> tuple[str, list]:
        """The rest of the choice, screened whole where a check needs it; raises APIError
        (422) on a response_format mismatch."""
        out = "" if self.blocked else self._release(len(self.pending))
        if not self.screen.holds_whole:
            return out, []
        text = self.held + out
        if self.screen.fmt is not None and not self.blocked:
            self.screen.fmt.check(text, self.index)
        if self.screen.hooks is not None:
            text = self.screen.hooks(text)
        return text, self.entries

    def _pass_on(self, out: str, entries: list) -> tuple[str, list]:
        if self.screen.holds_whole:  # sent at the end, entries with their text
            self.held += out
            self.entries += entries
            return "", []
        return out, entries

    def _cut(self) -> int:
        """How much of the pending text may be screened and sent now (0: nothing yet)."""
        window, text = self.screen.window, self.pending
        limit = len(text) - window
        if limit <= 0:
            return 0
        at = max(text.rfind(c, 0, limit) for c in _WHITESPACE)
        cut = at + 1 if at >= 0 else (limit if len(text) >= 4 * window else 0)
        # Detectors run once per release: releasing a few words at a time, not every token,
        # keeps their cost per answer down.
        return cut if cut >= _MIN_RELEASE else 0

    def _release(self, cut: int) -> str:
        if cut <= 0:
            return ""
        spans = self.screen.find(self.pending)
        for s in reversed(spans):  # a span across the cut waits whole for the next round
            if s.start < cut < s.end:
                cut = s.start
        head = [s for s in spans if s.end <= cut]
        out, self.blocked = self.screen.apply(self.pending[:cut], head)
        self.pending = self.pending[cut:]
        if self.blocked:
            self.pending = ""
        return out
