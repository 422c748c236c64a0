"""PII detection with Presidio and honed's own recognizers (patterns only, no model)."""

from __future__ import annotations

import pytest

from honed.security.pii import PiiSpan, find_pii, redact, redact_spans


def _found(text: str) -> list[tuple[str, str]]:
    return [(s.entity, text[s.start : s.end]) for s in find_pii(text)]


@pytest.mark.parametrize(
    ("text", "entity", "value"),
    [
        ("Call me at 212-555-0199 tomorrow.", "PHONE_NUMBER", "212-555-0199"),
        ("Phone:\n467 3395", "PHONE_NUMBER", "467 3395"),
        ("Fax: +41 (0)62 585 51 90", "PHONE_NUMBER", "+41 (0)62 585 51 90"),
        ("Desk: 345-899-3560x4587", "PHONE_NUMBER", "345-899-3560x4587"),
        ("ring +447700677662 now", "PHONE_NUMBER", "+447700677662"),
        ("card 4111 1111 1111 1111 please", "CREDIT_CARD", "4111 1111 1111 1111"),
        ("Maestro 675984103431 on file", "CREDIT_CARD", "675984103431"),  # 12 digits
        ("Visa 4064557646766436702 on file", "CREDIT_CARD", "4064557646766436702"),  # 19
        ("server at 86.121.97.248 is down", "IP_ADDRESS", "86.121.97.248"),
        ("v6 host 2001:db8::8a2e:370:7334 up", "IP_ADDRESS", "2001:db8::8a2e:370:7334"),
        ("my SSN is 460-89-9847", "US_SSN", "460-89-9847"),
        ("IBAN GB59IFUE40226315499137 please", "IBAN_CODE", "GB59IFUE40226315499137"),
        ("write to uta.kortig@jourrapide.com", "EMAIL_ADDRESS", "uta.kortig@jourrapide.com"),
    ],
)
def test_structured_entities_are_found(text: str, entity: str, value: str) -> None:
    assert (entity, value) in _found(text)


@pytest.mark.parametrize(
    "text",
    [
        "The meeting was held on 11.01.2008 in Helsinki.",  # a date is no phone number
        "Net sales rose in 2007-2008 to EUR 131.6 mn.",
        "the number of K shares will be 9 540 000 and of A shares 26 885 540 .",
        "The office is at 17031 2202 Rissik St.",
        "Business ID 1944757-4 ; ZIP 75534-030",
        "Sales were EUR 1,234,567 and 105.9 82.7 last year",
        "4111 1111 1111 1112 fails Luhn",
        "Operating profit totalled EUR 21.1 mn , up from EUR 18.6 mn in 2007 .",
    ],
)
def test_numbers_that_are_not_pii_stay(text: str) -> None:
    assert find_pii(text) == []


def test_ip_address_is_not_a_phone() -> None:
    assert _found("from 192.168.10.200 today") == [("IP_ADDRESS", "192.168.10.200")]


def test_redact_replaces_each_span_with_its_tag() -> None:
    text = "Mail a@b.co or call 212-555-0199 from 10.0.0.1"
    assert redact(text) == "Mail [EMAIL] or call [PHONE] from [IP]"
    assert redact_spans("abc", []) == "abc"
    assert redact_spans("hi Bob", [PiiSpan("PERSON", 3, 6, 0.9, "x")]) == "hi [PERSON]"


def test_text_without_digits_or_at_sign_is_not_analyzed(monkeypatch) -> None:
    from honed.security import pii

    def fail(*args, **kwargs):
        raise AssertionError("analyzer built for a text that cannot hold structured PII")

    monkeypatch.setattr(pii, "analyzer", fail)
    assert find_pii("no numbers here at all") == []
    assert find_pii("") == []


GATE_TEXTS = [
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007 .",
    "the number of K shares will be 9 540 000 and of A shares 26 885 540 .",
    "A replay will be available until 27 October 2006 : US callers : +1 617 801 6888 .",
    "contact Maija-Liisa Friman , CEO , tel. +358 9 7597 0711 .",
    "rosendal at outotec.com tel. +358 20 529 2004 , +358 400 817198 e-mail eila .",
    "Mail a@b.co or call 212-555-0199 from 10.0.0.1",
    "card 4111 1111 1111 1111 please, not 4111 1111 1111 1112",
    "IBAN GB59IFUE40226315499137 please; SSN 460-89-9847; host 2001:db8::8a2e:370:7334",
    "655 437 108 office",
    "5 534 530 tonnes",
]


@pytest.mark.parametrize("text", GATE_TEXTS)
def test_the_gate_never_changes_what_presidio_finds(text: str) -> None:
    """find_pii skips Presidio when no recognizer's pattern match survives its own checks:
    the spans are those of the analyzer run on every text."""
    from honed.security import pii

    everything = pii._spans(pii.analyzer(), text, pii.STRUCTURED, 0.5)
    assert find_pii(text) == everything


def test_numbers_without_a_candidate_skip_the_analyzer(monkeypatch) -> None:
    from honed.security import pii

    pii.analyzer()  # built (and the gate compiled) before the analyzer is made to fail

    def fail(*args, **kwargs):
        raise AssertionError("Presidio ran on a text no recognizer could report")

    monkeypatch.setattr(pii, "_spans", fail)
    assert find_pii("Net sales rose 12.5 % to EUR 131.6 mn in 2007 .") == []
    with pytest.raises(AssertionError, match="Presidio ran"):
        find_pii("call 212-555-0199 now")


class _FakeTagger:
    """Stands in for a trained honed ner model: tags 'Maria Rossi' and 'Milan'."""

    def __init__(self, folder, device: str = "cpu") -> None:
        self.folder = folder

    def __call__(self, texts: list[str]):
        from honed.models.tagger import Entity

        out = []
        for text in texts:
            found = []
            for word, kind in (("Maria Rossi", "PER"), ("Milan", "LOCATION")):
                at = text.find(word)
                if at >= 0:
                    found.append(Entity(kind, at, at + len(word), 0.9))
            out.append(found)
        return out


def test_detector_adds_the_ner_model_as_a_presidio_recognizer(tmp_path, monkeypatch) -> None:
    from honed.models import tagger
    from honed.security.pii import PiiDetector

    monkeypatch.setattr(tagger, "Tagger", _FakeTagger)
    (tmp_path / "config.json").write_text("{}")
    detector = PiiDetector(tmp_path)
    text = "Maria Rossi (212-555-0199) lives in Milan"
    assert [(s.entity, s.source) for s in detector.find(text)] == [
        ("PERSON", "HonedNerRecognizer"),  # the model's PER, under Presidio's name
        ("PHONE_NUMBER", "HonedPhoneRecognizer"),
        ("LOCATION", "HonedNerRecognizer"),
    ]
    assert detector.redact(text) == "[PERSON] ([PHONE]) lives in [LOCATION]"
    strict = PiiDetector(tmp_path, min_score=0.8)  # over the phone pattern's 0.6
    assert strict.redact(text) == "[PERSON] (212-555-0199) lives in [LOCATION]"
    assert PiiDetector().redact(text) == "Maria Rossi ([PHONE]) lives in Milan"


def test_detector_refuses_a_folder_without_a_model(tmp_path) -> None:
    from honed.errors import ModelError
    from honed.security.pii import PiiDetector

    with pytest.raises(ModelError, match="not a model folder"):
        PiiDetector(tmp_path)
