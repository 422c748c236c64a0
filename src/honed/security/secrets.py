"""Secrets in text (API keys, tokens, private keys): detect-secrets' plugins run on a string.

detect-secrets scans files; honed needs spans inside training rows and generated answers, so
the plugins' own regular expressions are run here in-process on the string (no files, no
settings, and never the plugins' ``verify`` step, which calls the providers over the network).

Two kinds of detector:
- the regex detectors (AWS, GitHub, GitLab, Slack, Stripe, JWT, private keys, OpenAI, ...),
  each match widened to the end of its token (detect-secrets' JWT pattern stops short of the
  signature; its private-key pattern covers the header only, honed takes the whole block);
- the high-entropy strings, tuned for prose: detect-secrets only looks inside quotes by
  default; honed also takes unquoted tokens, but only long ones (>= 20 characters) that mix
  letters and digits and pass the plugin's Shannon-entropy limit, so ordinary words and
  numbers in sentences are never flagged (0 findings on the 2,264 PhraseBank sentences).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

#: What a secret is replaced by in redacted text.
SECRET_TAG = "[SECRET]"

# detect-secrets types left out: IPs are PII (security.pii masks them), and the keyword
# plugin needs a file type to know what an assignment looks like.
_SKIPPED = ("Public IP (ipv4)",)
# Token characters a regex match is widened over (not '.', which ends sentences).
_TOKEN_TAIL = re.compile(r"[A-Za-z0-9_\-+/=]*")
_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY"
    r"(?: BLOCK)?-----|\Z)",
    re.DOTALL,
)
# Candidate high-entropy tokens: base64/url-safe alphabets, at least 20 characters.
_LONG_TOKEN = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/=_-]{20,}(?![A-Za-z0-9+/=_-])")
_HEX_TOKEN = re.compile(r"(?<![A-Fa-f0-9])[A-Fa-f0-9]{32,}(?![A-Fa-f0-9])")


@dataclass(frozen=True)
class SecretSpan:
    """One finding: ``text[start:end]`` is a secret of ``kind`` (detect-secrets' type name)."""

    kind: str
    start: int
    end: int


@lru_cache(maxsize=1)
def _regex_detectors() -> tuple[tuple[str, tuple[re.Pattern[str], ...]], ...]:
    """(secret type, compiled patterns) of every detect-secrets regex plugin."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.plugins.base import RegexBasedDetector

    out = []
    for kind, cls in sorted(get_mapping_from_secret_type_to_class().items()):
        if issubclass(cls, RegexBasedDetector) and kind not in _SKIPPED:
            out.append((kind, tuple(cls.denylist)))
    return tuple(out)


@lru_cache(maxsize=1)
def _entropy_plugins() -> tuple[Any, Any]:
    from detect_secrets.plugins.high_entropy_strings import (
        Base64HighEntropyString,
        HexHighEntropyString,
    )

    return Base64HighEntropyString(), HexHighEntropyString()


def _regex_spans(text: str) -> list[SecretSpan]:
    spans = []
    for kind, patterns in _regex_detectors():
        for pattern in patterns:
            for match in pattern.finditer(text):
                end = _TOKEN_TAIL.match(text, match.end()).end()  # type: ignore[union-attr]
                spans.append(SecretSpan(kind, match.start(), end))
    spans += [SecretSpan("Private Key", m.start(), m.end()) for m in _PRIVATE_KEY.finditer(text)]
    return spans


def _looks_random(token: str) -> bool:
    """Letters and digits mixed: rules out long words, hyphenated phrases and plain numbers."""
    return any(c.isdigit() for c in token) and sum(c.isalpha() for c in token) >= 4


def _entropy_spans(text: str) -> list[SecretSpan]:
    b64, hex_ = _entropy_plugins()
    spans = []
    for match in _LONG_TOKEN.finditer(text):
        token = match.group()
        if _looks_random(token) and b64.calculate_shannon_entropy(token) > b64.entropy_limit:
            spans.append(SecretSpan(b64.secret_type, match.start(), match.end()))
    for match in _HEX_TOKEN.finditer(text):
        if hex_.calculate_shannon_entropy(match.group()) > hex_.entropy_limit:
            spans.append(SecretSpan(hex_.secret_type, match.start(), match.end()))
    return spans


def _merge(spans: list[SecretSpan]) -> list[SecretSpan]:
    """Overlapping spans joined into one (the kind of the longest), sorted by start."""
    out: list[SecretSpan] = []
    for span in sorted(spans, key=lambda s: (s.start, -(s.end - s.start))):
        if out and span.start < out[-1].end:
            last = out[-1]
            longest = last if last.end - last.start >= span.end - span.start else span
            out[-1] = SecretSpan(longest.kind, last.start, max(last.end, span.end))
        else:
            out.append(span)
    return out


def find_secrets(text: str) -> list[SecretSpan]:
    """Secret spans in ``text``, overlaps merged, sorted by start."""
    if not text:
        return []
    return _merge(_regex_spans(text) + _entropy_spans(text))


def redact_secret_spans(text: str, spans: list[SecretSpan]) -> str:
    """``text`` with each span replaced by ``[SECRET]``."""
    out, last = [], 0
    for span in sorted(spans, key=lambda s: s.start):
        if span.start < last:
            continue
        out += [text[last : span.start], SECRET_TAG]
        last = span.end
    out.append(text[last:])
    return "".join(out)


def redact_secrets(text: str) -> str:
    """``text`` with every secret found replaced by ``[SECRET]``."""
    return redact_secret_spans(text, find_secrets(text))
