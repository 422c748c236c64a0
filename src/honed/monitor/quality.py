"""Output quality and service objectives.

- Classifiers: confidence distribution (mean, low-confidence share, histogram) and agreement
  with the labels users gave as feedback.
- Generators: empty outputs, refusals (phrase list), length anomalies against the reference
  character-length quantiles, format validity (JSON or a regex), PII in outputs (through
  honed.security.pii: e-mails, phones, cards passing Luhn, IBANs passing mod-97, US SSNs, IPs).
- Service: latency p50/p95/p99 and error rate against objectives.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from honed.evals.profile import confidence_summary
from honed.monitor.config import ObjectivesConfig

REFUSAL_PHRASES = (
    "i'm sorry, but",
    "i am sorry, but",
    "i can't help with",
    "i cannot help with",
    "i can't assist",
    "i cannot assist",
    "i'm unable to",
    "i am unable to",
    "i won't be able to",
    "as an ai language model",
    "i cannot provide",
    "i can't provide",
    "i must decline",
)


class QualityConfig(ObjectivesConfig):
    """Checks on generated outputs and service objectives."""

    output_format: Literal["text", "json", "regex"] = Field(
        "text", description="Expected output format: free text, a JSON document, or a regex."
    )
    format_regex: str | None = Field(
        None, description="Pattern the whole output must match when output_format is 'regex'."
    )
    refusal_phrases: tuple[str, ...] = Field(
        REFUSAL_PHRASES, description="Lower-case phrases marking a refusal."
    )
    min_chars_quantile: str = Field(
        "0.01", description="Reference char-length quantile below which an output is too short."
    )
    max_chars_quantile: str = Field(
        "0.99", description="Reference char-length quantile above which an output is too long."
    )
    low_confidence: float = Field(
        0.5, ge=0, le=1, description="Classifier confidence below this counts as low."
    )


# --- PII ---------------------------------------------------------------------------------------

#: Flag names (``pii:<kind>``) of the structured entity types honed.security.pii finds.
PII_KINDS = {
    "EMAIL_ADDRESS": "email",
    "CREDIT_CARD": "credit_card",
    "PHONE_NUMBER": "phone",
    "IBAN_CODE": "iban",
    "US_SSN": "ssn",
    "IP_ADDRESS": "ip",
}


def find_pii(text: str) -> dict[str, list[str]]:
    """PII found in ``text`` by kind (honed.security.pii: Presidio's recognizers with
    checksums, and honed's)."""
    from honed.security.pii import find_pii as find_spans

    hits: dict[str, list[str]] = {}
    for span in find_spans(text):
        kind = PII_KINDS.get(span.entity, span.entity.lower())
        hits.setdefault(kind, []).append(text[span.start : span.end])
    return hits


def redact_pii(text: str) -> str:
    """A ready-made redaction hook for the request log: each PII span -> its tag
    (``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[IBAN]``, ``[SSN]``, ``[IP]``)."""
    from honed.security.pii import redact

    return redact(text)


def pii_redactor(ner_model: Path | None = None) -> Callable[[str], str]:
    """The request log's redaction hook: the structured types and, with ``ner_model`` (a
    honed ``ner`` run folder), names, street addresses and places. The detector (and model)
    loads at the first text (the server calls it once at start), in the caller's thread."""
    if ner_model is None:
        return redact_pii
    from honed.security.pii import PiiDetector

    return PiiDetector(ner_model).redact


# --- generator outputs -----------------------------------------------------------------------


def is_refusal(text: str, phrases: Sequence[str] = REFUSAL_PHRASES) -> bool:
    low = text.strip().lower().replace("’", "'")
    return any(p in low for p in phrases)


def format_ok(text: str, cfg: QualityConfig) -> bool:
    if cfg.output_format == "json":
        try:
            json.loads(text)
        except ValueError:
            return False
        return True
    if cfg.output_format == "regex":
        if cfg.format_regex is None:
            raise ValueError("output_format 'regex' needs format_regex")
        return re.fullmatch(cfg.format_regex, text, flags=re.DOTALL) is not None
    return True


def check_output(
    text: str | None, cfg: QualityConfig, char_quantiles: dict[str, float] | None = None
) -> list[str]:
    """Flags for one generated output: empty, refusal, too_short, too_long, bad_format,
    pii:<type>."""
    text = text or ""
    if not text.strip():
        return ["empty"]
    flags = []
    if is_refusal(text, cfg.refusal_phrases):
        flags.append("refusal")
    if char_quantiles:
        low = char_quantiles.get(cfg.min_chars_quantile)
        high = char_quantiles.get(cfg.max_chars_quantile)
        if low is not None and len(text) < low:
            flags.append("too_short")
        if high is not None and len(text) > high:
            flags.append("too_long")
    if not format_ok(text, cfg):
        flags.append("bad_format")
    flags += [f"pii:{kind}" for kind in find_pii(text)]
    return flags


def generation_quality(
    outputs: Sequence[str | None],
    cfg: QualityConfig | None = None,
    char_quantiles: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Rates of each flag over ``outputs`` (e.g. ``{"empty": 0.01, "pii:email": 0.002}``)."""
    cfg = cfg or QualityConfig()
    counts: Counter[str] = Counter()
    for text in outputs:
        counts.update(set(check_output(text, cfg, char_quantiles)))
    n = max(len(outputs), 1)
    rates = {flag: c / n for flag, c in sorted(counts.items())}
    pii_any = sum(c for flag, c in counts.items() if flag.startswith("pii:"))
    return {"n": len(outputs), "rates": rates, "pii_outputs": pii_any}


# --- classifiers -----------------------------------------------------------------------------


def classifier_quality(
    confidences: Sequence[float],
    predictions: Sequence[str] | None = None,
    feedback_labels: Sequence[str | None] | None = None,
    cfg: QualityConfig | None = None,
) -> dict[str, Any]:
    """Confidence summary; agreement of predictions with user-given labels (where given)."""
    cfg = cfg or QualityConfig()
    conf = np.asarray(confidences, dtype=np.float64)
    out: dict[str, Any] = {
        "confidence": confidence_summary(conf),
        "low_confidence_share": float((conf < cfg.low_confidence).mean()) if len(conf) else 0.0,
    }
    if predictions is not None and feedback_labels is not None:
        if len(predictions) != len(feedback_labels):
            raise ValueError("predictions and feedback_labels differ in length")
        pairs = [(p, f) for p, f in zip(predictions, feedback_labels, strict=True) if f]
        out["feedback_n"] = len(pairs)
        out["feedback_agreement"] = sum(p == f for p, f in pairs) / len(pairs) if pairs else None
    return out


# --- service objectives ----------------------------------------------------------------------


def service_objectives(
    latencies_ms: Iterable[float | None],
    status_codes: Iterable[int | None],
    errors: Iterable[str | None] | None = None,
    cfg: ObjectivesConfig | None = None,
) -> dict[str, Any]:
    """Latency percentiles, error rate, which objectives are breached, and a status: ``ok``,
    ``alert`` (some objective breached) or ``insufficient_data`` (fewer than
    ``cfg.min_requests`` requests: nothing is judged)."""
    cfg = cfg or ObjectivesConfig()
    lat = np.array([x for x in latencies_ms if x is not None], dtype=np.float64)
    codes = list(status_codes)
    errs = list(errors) if errors is not None else [None] * len(codes)
    failed = sum((c or 0) >= 500 or bool(e) for c, e in zip(codes, errs, strict=True))
    n = len(codes)
    pct = {f"p{q}": float(np.percentile(lat, q)) if len(lat) else None for q in (50, 95, 99)}
    error_rate = failed / n if n else 0.0
    judged = n >= cfg.min_requests
    breaches = _breaches(pct, error_rate, cfg) if judged else []
    status = ("alert" if breaches else "ok") if judged else "insufficient_data"
    return {
        "n": n,
        "latency_ms": pct,
        "error_rate": error_rate,
        "breaches": breaches,
        "status": status,
        "objectives": {
            "latency_p95_ms": cfg.latency_p95_ms,
            "latency_p99_ms": cfg.latency_p99_ms,
            "max_error_rate": cfg.max_error_rate,
        },
    }


def _breaches(pct: dict[str, float | None], error_rate: float, cfg: ObjectivesConfig) -> list[str]:
    breaches = []
    if pct["p95"] is not None and pct["p95"] > cfg.latency_p95_ms:
        breaches.append("latency_p95")
    if pct["p99"] is not None and pct["p99"] > cfg.latency_p99_ms:
        breaches.append("latency_p99")
    if error_rate > cfg.max_error_rate:
        breaches.append("error_rate")
    return breaches
