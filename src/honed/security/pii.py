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

import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
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


# --- honed's own recognizers ----------------------------------------------------------------
#
# Presidio's PhoneRecognizer scores every match 0.4 (under the usual 0.5 threshold) and misses
# short national formats ("467 3395", "71-33-52-22"); its CreditCardRecognizer only knows some
# issuer prefixes (misses 12-digit Maestro, 15-digit JCB 2131..., 19-digit Visa). honed's
# recognizers take every plausible shape and let validation decide: Luhn for cards; for
# phones, shapes that are dates, IP addresses, SSNs or decimals are refused.

# Digit groups joined by one separator, an optional +country code, (area) and extension.
_PHONE_REGEX = (
    r"(?<![\w.+\-/:@])(?<!\d,)"
    r"(?:\+\d{1,3}[ .\-]?)?"
    r"(?:\(\d{1,4}\)[ .\-]?)?"
    r"\d{1,12}(?:[ .\-](?:\(\d{1,4}\)[ .\-]?)?\d{1,8}|\(\d{1,4}\)\d{1,8}){0,5}"
    r"(?:[ ]?(?:x|ext\.?)[ ]?\d{1,5})?"
    r"(?![\w@]|[.,\-/:]\d)"
)
_DATE = re.compile(r"\d{1,2}[./\-]\d{1,2}[./\-](?:\d{2}|\d{4})|\d{4}[./\-]\d{1,2}[./\-]\d{1,2}")
_YEARS = re.compile(r"(?:19|20)\d\d[ \-](?:19|20)\d\d")  # 2007-2008
_POSTCODE = re.compile(r"\d{5}-\d{3,4}|\d{4}-\d{3}")  # US ZIP+4, Brazil, Portugal
_CHECK_DIGIT = re.compile(r".*[ .\-]\d")  # 1944757-4: a company id, no phone ends so
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_SSN_SHAPE = re.compile(r"\d{3}-\d{2}-\d{4}")
_EXTENSION = re.compile(r"[ ]?(?:x|ext\.?)[ ]?\d{1,5}$")
# Shapes numbers other than phone numbers also take: "5 534 530" (thousands), "638 2229"
# (a house number then a street number). Taken as phones only next to a word saying so.
_WEAK_SHAPE = re.compile(r"\d{1,3}(?: \d{3})+|\d{1,5} \d{1,8}")
_PHONE_WORDS = r"phone|tel|telephone|mobile|cell|fax|call|called|calling|dial|desk|contact|"
_PHONE_WORDS += r"reach|answering|sms|whatsapp"
_CONTEXT_BEFORE_WORDS = re.compile(rf"\b(?:{_PHONE_WORDS})\b", re.IGNORECASE)
# After the number also where it rings: "655 437 108 office" ("office is at 17 Main St" is not).
_CONTEXT_AFTER_WORDS = re.compile(rf"\b(?:{_PHONE_WORDS}|office|home|work)\b", re.IGNORECASE)
_CONTEXT_BEFORE, _CONTEXT_AFTER = 40, 15
# 12-19 digits in one run or groups; Luhn and the grouping decide (a '+' starts a phone).
_CARD_REGEX = r"(?<![\w+\-.])\d(?:[ \-]?\d){11,18}(?![\w]|[.\-]\d)"


def _date_like(text: str) -> bool:
    """`11.01.2008`, `2008-01-11`, `1/11/08`: day and month in range."""
    if not _DATE.fullmatch(text):
        return False
    parts = [int(p) for p in re.split(r"[./\-]", text)]
    day_month = parts[1:] if parts[0] > 31 else parts[:2]
    return all(1 <= p <= 31 for p in day_month) and min(day_month) <= 12


def _phone_refused(text: str) -> bool:
    """Why a phone-shaped match is not a phone number: a date, a year range, a postcode, an
    IPv4 address, an SSN, a decimal, or a plain number too short or too long to be one."""
    body = _EXTENSION.sub("", text)
    digits = sum(c.isdigit() for c in body)
    if not 7 <= digits <= 15:
        return True
    if not any(c in " .-()" for c in body) and not body.startswith("+"):
        return not 10 <= digits <= 12  # a bare run of digits: only the usual national lengths
    if "." in body and (" " in body or body.count(".") == 1):
        return True  # 105.9 82.7, 2009 10.30, 1234.5678: decimals, not phone groups
    shapes = (_YEARS, _POSTCODE, _IPV4, _SSN_SHAPE, _CHECK_DIGIT)
    return _date_like(body) or any(shape.fullmatch(body) for shape in shapes)


def _needs_context(text: str, start: int, end: int) -> bool:
    """A weak shape with no phone word before it (or just after it)."""
    if not _WEAK_SHAPE.fullmatch(text[start:end]):
        return False
    before = text[max(0, start - _CONTEXT_BEFORE) : start]
    after = text[end : end + _CONTEXT_AFTER]
    return not (_CONTEXT_BEFORE_WORDS.search(before) or _CONTEXT_AFTER_WORDS.search(after))


def _luhn_ok(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_grouping_ok(number: str) -> bool:
    """Cards are printed as one run or in groups of four (Amex 4-6-5, Diners 4-6-4); a phone
    number in groups of 2-3 digits that happens to pass Luhn is not a card."""
    groups = re.split(r"[ \-]", number)
    if len(groups) == 1:
        return True
    sizes = [len(g) for g in groups]
    return sizes[0] == 4 and (all(s == 4 for s in sizes[1:-1]) or sizes[1] == 6)


@lru_cache(maxsize=1)
def _recognizer_classes() -> tuple[type, type]:
    """Defined once: Presidio's loader finds recognizer classes among the subclasses of
    PatternRecognizer by name, so these must neither repeat nor shadow its names."""
    from presidio_analyzer import PatternRecognizer

    class HonedPhoneRecognizer(PatternRecognizer):
        def invalidate_result(self, pattern_text: str) -> bool:
            return _phone_refused(pattern_text)

        def analyze(self, text: str, entities: list[str], *args: Any, **kwargs: Any) -> Any:
            found = super().analyze(text, entities, *args, **kwargs)
            return [r for r in found if self.keeps(text, r.start, r.end)]

        @staticmethod
        def keeps(text: str, start: int, end: int) -> bool:
            """A match ``analyze`` keeps after the pattern checks (PII detection's gate asks
            every recognizer that has this method)."""
            return not _needs_context(text, start, end)

    class HonedCardRecognizer(PatternRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return _luhn_ok(pattern_text) and _card_grouping_ok(pattern_text)

    return HonedPhoneRecognizer, HonedCardRecognizer


def _honed_recognizers() -> list[Any]:
    from presidio_analyzer import Pattern

    phone_cls, card_cls = _recognizer_classes()
    phone = phone_cls(
        supported_entity="PHONE_NUMBER",
        name="HonedPhoneRecognizer",
        patterns=[Pattern("phone", _PHONE_REGEX, PHONE_SCORE)],
        context=["phone", "call", "tel", "mobile", "fax", "number"],
    )
    card = card_cls(
        supported_entity="CREDIT_CARD",
        name="HonedCardRecognizer",
        patterns=[Pattern("card 12-19 digits", _CARD_REGEX, 0.3)],
        context=["card", "credit", "visa", "mastercard", "amex", "payment"],
    )
    return [phone, card]


#: Score of a phone-shaped match that no rule refused (over the default `min_score` 0.5).
PHONE_SCORE = 0.6
#: Presidio recognizers replaced by honed's (see above).
_REPLACED = {"PhoneRecognizer", "CreditCardRecognizer"}


def _registry(entities: tuple[str, ...], nlp: Any) -> Any:
    from presidio_analyzer import RecognizerRegistry

    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(nlp_engine=nlp, languages=["en"])
    wanted = set(entities)
    # Keep only what was asked for: e.g. UK_NHS matches any 10-digit phone number.
    registry.recognizers = [
        r
        for r in registry.recognizers + _honed_recognizers()
        if wanted & set(r.supported_entities) and r.name not in _REPLACED
    ]
    return registry


def analyzer(entities: tuple[str, ...] = STRUCTURED) -> Any:
    """A Presidio AnalyzerEngine with only the recognizers for `entities` (cached per process
    and entity set; thread-safe to call once built). The first build takes seconds (spaCy's
    import)."""
    return _analyzer(tuple(sorted(entities)))


@lru_cache(maxsize=8)
def _analyzer(entities: tuple[str, ...]) -> Any:
    from presidio_analyzer import AnalyzerEngine

    with _BUILD_LOCK:
        _offline_tldextract()
        nlp = _blank_nlp_engine()
        return AnalyzerEngine(
            nlp_engine=nlp, registry=_registry(entities, nlp), supported_languages=["en"]
        )


def find_pii(
    text: str, entities: tuple[str, ...] = STRUCTURED, min_score: float = 0.5
) -> list[PiiSpan]:
    """PII spans in `text`, overlaps resolved to the highest score, sorted by start."""
    if not text or not _may_hold(text, entities) or not _candidate(text, entities):
        return []
    return _spans(analyzer(entities), text, entities, min_score)


def _spans(engine: Any, text: str, entities: tuple[str, ...], min_score: float) -> list[PiiSpan]:
    results = engine.analyze(
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


def _may_hold(text: str, entities: tuple[str, ...]) -> bool:
    """A cheap gate: every structured entity holds a digit, except e-mail addresses (an '@').
    Most texts of a request log hold neither and skip the analyzer."""
    if not set(entities) <= set(STRUCTURED):
        return True
    return "@" in text or any(c.isdigit() for c in text)


def _candidate(text: str, entities: tuple[str, ...]) -> bool:
    """Whether any recognizer of the analyzer could report a span in ``text``: one of its
    patterns matches and the recognizer's own checks do not throw the match out.

    Why: Presidio's ``analyze`` costs ~0.6 ms a text (spaCy tokenization, every recognizer,
    context enhancement) even where nothing matches, and most request-log texts with a digit
    (prices, dates, percentages) hold no PII: in serving it was a third of the server process's
    CPU. A pattern recognizer reports only matches of its patterns that pass
    ``validate_result``/``invalidate_result`` (honed's phone recognizer also drops weak shapes
    without a phone word), so where no match passes, ``analyze`` finds nothing: this gate
    never changes a result. Recognizers that override ``analyze`` otherwise count any match.
    """
    recognizers = _gate(tuple(sorted(entities)))
    if recognizers is None:
        return True
    return any(_passes(rec, text, compiled, own) for rec, compiled, own in recognizers)


def _passes(recognizer: Any, text: str, compiled: list[Any], own_checks: bool) -> bool:
    keeps = getattr(recognizer, "keeps", None)  # a rule its analyze adds (honed's phones)
    for pattern in compiled:
        for match in pattern.finditer(text):
            start, end = match.span()
            found = text[start:end]
            if not found:
                continue
            if not own_checks:
                return True
            if recognizer.validate_result(found) is False or recognizer.invalidate_result(found):
                continue
            if keeps is not None and not keeps(text, start, end):
                continue
            return True
    return False


@lru_cache(maxsize=8)
def _gate(entities: tuple[str, ...]) -> tuple[tuple[Any, list[Any], bool], ...] | None:
    """(recognizer, its patterns compiled as Presidio compiles them, whether its matches go
    through the base ``analyze``) for the analyzer of ``entities``; None (no gate) when a
    recognizer is not a pattern recognizer (spaCy's over the blank pipeline, which finds no
    entities, is left out)."""
    import regex
    from presidio_analyzer import PatternRecognizer
    from presidio_analyzer.predefined_recognizers import SpacyRecognizer

    phone_cls, _ = _recognizer_classes()
    engine = _analyzer(entities)
    gate = []
    for rec in engine.registry.recognizers:
        if isinstance(rec, SpacyRecognizer) and not engine.nlp_engine.nlp["en"].pipe_names:
            continue  # it reports spaCy's entities, and the blank pipeline has none
        if not isinstance(rec, PatternRecognizer):
            return None
        # base analyze, or one that only filters it through ``keeps`` (honed's phones)
        own = type(rec).analyze is PatternRecognizer.analyze or isinstance(rec, phone_cls)
        flags = rec.global_regex_flags
        gate.append((rec, [regex.compile(p.regex, flags=flags) for p in rec.patterns], own))
    return tuple(gate)


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


# --- a honed NER model for what patterns cannot catch ---------------------------------------

#: Entity types a honed `ner` model adds (Presidio's names).
NER_ENTITIES = ("PERSON", "STREET_ADDRESS", "LOCATION")
#: Other names a token classifier may use for them (CoNLL-style PER/LOC, OntoNotes GPE).
NER_NAMES = {"PER": "PERSON", "LOC": "LOCATION", "GPE": "LOCATION", "ADDRESS": "STREET_ADDRESS"}


@lru_cache(maxsize=1)
def _ner_recognizer_class() -> type:
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    class HonedNerRecognizer(EntityRecognizer):
        """A honed token-classification run folder as a Presidio recognizer."""

        def __init__(self, model_dir: Path, entities: tuple[str, ...]):
            self.model_dir = Path(model_dir)
            super().__init__(
                supported_entities=list(entities), name="HonedNerRecognizer", version="1"
            )

        def load(self) -> None:
            from honed.models.tagger import Tagger

            self.tagger = Tagger(self.model_dir)

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list:
            wanted = set(entities) & set(self.supported_entities)
            out = []
            for found in self.tagger([text])[0]:
                entity = NER_NAMES.get(found.entity, found.entity)
                if entity in wanted:
                    meta = {RecognizerResult.RECOGNIZER_NAME_KEY: self.name}
                    out.append(
                        RecognizerResult(entity, found.start, found.end, found.score, None, meta)
                    )
            return out

    return HonedNerRecognizer


@lru_cache(maxsize=4)
def _ner_analyzer(entities: tuple[str, ...], model_dir: str) -> Any:
    """An analyzer with the pattern recognizers for `entities` plus the NER model."""
    from presidio_analyzer import AnalyzerEngine

    with _BUILD_LOCK:
        _offline_tldextract()
        nlp = _blank_nlp_engine()
        registry = _registry(entities, nlp)
        ner = tuple(e for e in entities if e not in STRUCTURED)
        registry.add_recognizer(_ner_recognizer_class()(Path(model_dir), ner))
        return AnalyzerEngine(nlp_engine=nlp, registry=registry, supported_languages=["en"])


class PiiDetector:
    """PII in texts: Presidio's and honed's pattern recognizers for the structured types and,
    given `ner_model` (a honed `ner` run folder), the model for names, addresses and places.

    Without a model it is `find_pii`; the analyzer (and model) load at the first call and are
    shared by every detector with the same settings. Thread-safe.
    """

    def __init__(
        self,
        ner_model: Path | None = None,
        entities: tuple[str, ...] | None = None,
        min_score: float = 0.5,
    ):
        self.ner_model = Path(ner_model) if ner_model else None
        default = STRUCTURED + (NER_ENTITIES if self.ner_model else ())
        self.entities = tuple(entities or default)
        self.min_score = min_score
        if self.ner_model is not None and not (self.ner_model / "config.json").is_file():
            from honed.errors import ModelError

            raise ModelError(f"{self.ner_model}: not a model folder (no config.json)")

    def find(self, text: str) -> list[PiiSpan]:
        """PII spans in `text`, overlaps resolved to the highest score, sorted by start."""
        if self.ner_model is None or set(self.entities) <= set(STRUCTURED):
            return find_pii(text, self.entities, self.min_score)
        if not text:
            return []
        engine = _ner_analyzer(tuple(sorted(self.entities)), str(self.ner_model))
        return _spans(engine, text, self.entities, self.min_score)

    def redact(self, text: str) -> str:
        """`text` with every span found replaced by its tag (`[PERSON]`, `[EMAIL]`...)."""
        return redact_spans(text, self.find(text))
