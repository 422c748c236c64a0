"""PII detection and redaction: Presidio's analyzer and anonymizer, run offline.

One detector serves the data scan (training rows), the request log (stored texts) and output
redaction (generated text). Presidio brings the pattern recognizers with checksums (credit
cards by Luhn, IBAN by mod-97, phone numbers through `phonenumbers`); honed adds its own
recognizers where Presidio has none and, optionally, a honed-trained NER model for what
patterns cannot catch (names, addresses).

Presidio normally needs a spaCy pipeline with NER (a download from GitHub); honed gives it a
blank English tokenizer instead (no network, ~0.1 s to build) because the named entities come
from honed's own NER model, not spaCy's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

#: Entity types found by patterns with validation (no model needed).
STRUCTURED = (
    "EMAIL_ADDRESS",
    "CREDIT_CARD",
    "PHONE_NUMBER",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
)

#: What each entity type is replaced by in redacted text.
TAGS = {
    "EMAIL_ADDRESS": "[EMAIL]",
    "CREDIT_CARD": "[CARD]",
    "PHONE_NUMBER": "[PHONE]",
    "IBAN_CODE": "[IBAN]",
    "US_SSN": "[SSN]",
    "IP_ADDRESS": "[IP]",
    "PERSON": "[PERSON]",
    "STREET_ADDRESS": "[ADDRESS]",
    "LOCATION": "[LOCATION]",
}


@dataclass(frozen=True)
class PiiSpan:
    """One finding: `text[start:end]` is an `entity` (Presidio's type name)."""

    entity: str
    start: int
    end: int
    score: float
    source: str  # the recognizer's name


_BUILD_LOCK = threading.Lock()


def _offline_tldextract() -> None:
    """Presidio's e-mail recognizer validates the domain with `tldextract`, whose default
    fetches the public suffix list over the network at first use; point it at the snapshot
    the package ships instead (never a network call at run time)."""
    import tldextract
    from presidio_analyzer.predefined_recognizers.generic import email_recognizer

    class _Offline:
        extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    email_recognizer.tldextract = _Offline  # type: ignore[assignment]


def _blank_nlp_engine() -> Any:
    import spacy
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    class BlankSpacyEngine(SpacyNlpEngine):
        """A spaCy tokenizer without a statistical model: tokens and no entities."""

        def __init__(self) -> None:
            super().__init__(models=[{"lang_code": "en", "model_name": "blank:en"}])

        def load(self) -> None:
            self.nlp = {"en": spacy.blank("en")}

    engine = BlankSpacyEngine()
    engine.load()
    return engine


@lru_cache(maxsize=4)
def analyzer(entities: tuple[str, ...] = STRUCTURED) -> Any:
    """A Presidio AnalyzerEngine with only the recognizers for `entities` (cached per process;
    thread-safe to call once built)."""
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry

    with _BUILD_LOCK:
        _offline_tldextract()
        nlp = _blank_nlp_engine()
        registry = RecognizerRegistry(supported_languages=["en"])
        registry.load_predefined_recognizers(nlp_engine=nlp, languages=["en"])
        # Keep only what was asked for: e.g. UK_NHS matches any 10-digit phone number.
        wanted = set(entities)
        registry.recognizers = [
            r for r in registry.recognizers if wanted & set(r.supported_entities)
        ]
        return AnalyzerEngine(nlp_engine=nlp, registry=registry, supported_languages=["en"])


def find_pii(
    text: str, entities: tuple[str, ...] = STRUCTURED, min_score: float = 0.5
) -> list[PiiSpan]:
    """PII spans in `text`, overlaps resolved to the highest score, sorted by start."""
    if not text:
        return []
    results = analyzer(entities).analyze(
        text=text, language="en", entities=list(entities), score_threshold=min_score
    )
    spans = [
        PiiSpan(
            r.entity_type,
            r.start,
            r.end,
            float(r.score),
            str((r.recognition_metadata or {}).get("recognizer_name", "")),
        )
        for r in results
    ]
    return _drop_overlaps(spans)


def _drop_overlaps(spans: list[PiiSpan]) -> list[PiiSpan]:
    kept: list[PiiSpan] = []
    for span in sorted(spans, key=lambda s: (-s.score, -(s.end - s.start), s.start)):
        if all(span.end <= k.start or span.start >= k.end for k in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: s.start)


def redact_spans(text: str, spans: list[PiiSpan]) -> str:
    """`text` with each span replaced by its tag (`[EMAIL]`, ...)."""
    out, last = [], 0
    for span in sorted(spans, key=lambda s: s.start):
        out.append(text[last : span.start])
        out.append(TAGS.get(span.entity, f"[{span.entity}]"))
        last = span.end
    out.append(text[last:])
    return "".join(out)


def redact(text: str, entities: tuple[str, ...] = STRUCTURED, min_score: float = 0.5) -> str:
    """`text` with every PII span found replaced by its tag."""
    return redact_spans(text, find_pii(text, entities, min_score))
