from __future__ import annotations

import pytest

from honed.monitor.quality import (
    QualityConfig,
    check_output,
    classifier_quality,
    find_pii,
    generation_quality,
    iban_ok,
    luhn_ok,
    service_objectives,
)


def test_checksums():
    assert luhn_ok("4111 1111 1111 1111") and not luhn_ok("4111 1111 1111 1112")
    assert iban_ok("DE89 3704 0044 0532 0130 00") and not iban_ok("DE89 3704 0044 0532 0130 01")


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("write to jane.doe@example.com today", "email"),
        ("call +1 415-555-0132 now", "phone"),
        ("card 4111-1111-1111-1111 exp 12/29", "credit_card"),
        ("pay to DE89 3704 0044 0532 0130 00 please", "iban"),
        ("ssn 123-45-6789 on file", "ssn"),
    ],
)
def test_pii_found(text, kind):
    assert kind in find_pii(text)


def test_no_pii_in_plain_finance_text():
    text = "Net sales rose 5.2 % to EUR 205.5 mn in 2010 ; card 4111-1111-1111-1112 is invalid"
    assert find_pii(text) == {}


def test_output_flags():
    cfg = QualityConfig(output_format="json")
    quant = {"0.01": 5.0, "0.99": 50.0}
    assert check_output("", cfg) == ["empty"]
    assert "refusal" in check_output("I'm sorry, but I can't help with that.", QualityConfig())
    assert "bad_format" in check_output("not json at all", cfg, quant)
    assert check_output('{"a": 1}', cfg, quant) == []
    assert "too_long" in check_output('{"a": "' + "x" * 100 + '"}', cfg, quant)
    assert "too_short" in check_output("{}", cfg, quant)
    rx = QualityConfig(output_format="regex", format_regex=r"(yes|no)")
    assert check_output("yes", rx) == [] and check_output("maybe", rx) == ["bad_format"]


def test_generation_rates():
    out = generation_quality(["", "fine answer", "mail a@b.co", "As an AI language model, no"])
    assert out["rates"]["empty"] == 0.25 and out["rates"]["refusal"] == 0.25
    assert out["rates"]["pii:email"] == 0.25 and out["pii_outputs"] == 1


def test_classifier_quality_and_feedback_agreement():
    q = classifier_quality([0.9, 0.4, 0.8, 0.95], ["a", "b", "a", "c"], ["a", None, "b", "c"])
    assert q["low_confidence_share"] == 0.25
    assert q["feedback_n"] == 3 and q["feedback_agreement"] == pytest.approx(2 / 3)


def test_service_objectives():
    lat = list(range(1, 101))
    codes = [200] * 97 + [500, 503, 200]
    res = service_objectives(
        lat, codes, [None] * 99 + ["timeout"], QualityConfig(latency_p95_ms=50)
    )
    assert res["latency_ms"]["p50"] == pytest.approx(50.5)
    assert res["error_rate"] == pytest.approx(0.03)
    assert res["breaches"] == ["latency_p95", "error_rate"]
    assert res["status"] == "alert" and res["objectives"]["latency_p95_ms"] == 50


def test_service_objectives_need_enough_requests():
    from honed.monitor.quality import ObjectivesConfig

    few = service_objectives([5000.0] * 5, [500] * 5, cfg=ObjectivesConfig(min_requests=10))
    assert few["status"] == "insufficient_data" and few["breaches"] == []
    assert few["error_rate"] == 1.0  # still measured, only not judged
    ok = service_objectives([5.0] * 10, [200] * 10, cfg=ObjectivesConfig(min_requests=10))
    assert ok["status"] == "ok"
    with pytest.raises(ValueError, match="max_error_rate"):
        ObjectivesConfig(max_error_rate=1.5)


def test_redact_pii_hook():
    from honed.monitor.quality import redact_pii

    text = "mail jane@x.org or call +1 415-555-0132, card 4111 1111 1111 1111; profit EUR 5 mn"
    out = redact_pii(text)
    assert out == "mail [EMAIL] or call [PHONE], card [CREDIT_CARD]; profit EUR 5 mn"


def test_pii_gates_skip_nothing_the_full_patterns_find():
    """The cheap pre-checks in find_pii only skip texts the full patterns find nothing in."""
    import random

    from honed.monitor import quality as q

    def ungated(text: str) -> dict:
        cards = [m for m in q._CARD.findall(text) if q.luhn_ok(m)]
        ssns = q._SSN.findall(text)
        hits = {
            "email": q._EMAIL.findall(text),
            "credit_card": cards,
            "iban": [m for m in q._IBAN.findall(text) if q.iban_ok(m)],
            "ssn": ssns,
            "phone": q._phones(text, cards + ssns),
        }
        return {k: v for k, v in hits.items() if v}

    pieces = [
        "call",
        "+1",
        "(555)",
        "123-4567",
        "555.123.4567",
        "4111 1111 1111 1111",
        "x@y.io",
        "GB82 WEST 1234 5698 7654 32",
        "123-45-6789",
        "EUR",
        "13.1",
        "mn",
        "2007",
        "-",
        ".",
    ]
    rng = random.Random(0)
    for _ in range(2000):
        text = " ".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))
        assert q.find_pii(text) == ungated(text), text
