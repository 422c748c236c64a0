from __future__ import annotations

import pytest

from honed.monitor.quality import (
    QualityConfig,
    check_output,
    classifier_quality,
    find_pii,
    generation_quality,
    pii_redactor,
    redact_pii,
    service_objectives,
)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("write to jane.doe@example.com today", "email"),
        ("call +1 415-555-0132 now", "phone"),
        ("card 4111-1111-1111-1111 exp 12/29", "credit_card"),
        ("pay to DE89 3704 0044 0532 0130 00 please", "iban"),
        ("ssn 460-89-9847 on file", "ssn"),  # Presidio refuses the sample 123-45-6789
        ("from 10.1.2.3 at noon", "ip"),
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
    text = "mail jane@x.org or call +1 415-555-0132, card 4111 1111 1111 1111; profit EUR 5 mn"
    out = redact_pii(text)
    assert out == "mail [EMAIL] or call [PHONE], card [CARD]; profit EUR 5 mn"
    # dates and IP addresses are no phone numbers (the old regexes masked both as [PHONE])
    assert redact_pii("on 11.01.2008 from 10.0.0.7") == "on 11.01.2008 from [IP]"
    assert pii_redactor(None) is redact_pii
