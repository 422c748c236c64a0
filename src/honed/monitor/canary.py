"""Canary analysis: is the challenger's arm as good as the primary over a window of traffic?

The request log says which arm answered each request (``arm``: ``primary``, ``canary`` or
``shadow``; rows without an arm, logged before any canary, count as ``primary``) and which
version (``version``). In canary mode the arms answer different requests (a traffic split);
in shadow mode the challenger answers a copy of primary requests under the SAME request id and
its answers are never returned, so users' feedback is about the primary only.

Per arm: requests, error rate (status >= 500), p50/p95 latency, explicit feedback (up, down,
corrections), implicit signals (regenerate, abandoned), the predicted-label distribution and
the versions seen. Between arms: total variation distance (and PSI) of the label
distributions, and agreement on paired requests (shadow: same request id; canary: identical
input texts). Guards (:class:`~honed.monitor.config.CanaryConfig`): error-rate rise, p95
latency ratio, negative-feedback rate (one-sided two-proportion z-test against a margin),
prediction shift, agreement. ``wait`` until both arms have ``min_requests``; ``rollback``
when a guard fails; ``promote`` otherwise.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import select

from honed.errors import HonedError
from honed.monitor.config import CanaryConfig
from honed.monitor.requestlog import FeedbackRow, RequestStore, as_utc

PROMOTE, ROLLBACK, WAIT = "promote", "rollback", "wait"
_COLUMNS = [
    "id",
    "item",
    "created_at",
    "arm",
    "version",
    "latency_ms",
    "status_code",
    "input_text",
    "output_text",
    "predicted_label",
]


@dataclass
class CanaryVerdict:
    decision: str  # promote | rollback | wait
    reasons: list[str]
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def analyse_canary(
    store: RequestStore,
    model: str,
    since: datetime,
    cfg: CanaryConfig | None = None,
    until: datetime | None = None,
) -> CanaryVerdict:
    """Compare the challenger's arm of served model ``model`` with its primary over
    ``[since, until)`` of the request log (and the feedback on those requests)."""
    cfg = cfg or CanaryConfig()
    rows = store.fetch(since, until, model, _COLUMNS)
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_arm.setdefault(row["arm"] or "primary", []).append(row)
    unknown = set(by_arm) - {"primary", "canary", "shadow"}
    if unknown:
        raise HonedError(f"request log: unknown arm(s) {sorted(unknown)} for model {model!r}")
    mode = "shadow" if by_arm.get("shadow") and not by_arm.get("canary") else "canary"
    primary, challenger = by_arm.get("primary", []), by_arm.get(mode, [])
    feedback = _feedback(store, since, [r for r in rows if r["arm"] != "shadow"])
    # Users saw only the primary's answer to a shadowed request: its feedback is the primary's.
    arms = {
        "primary": _arm_stats(primary, feedback),
        mode: _arm_stats(challenger, {} if mode == "shadow" else feedback),
    }
    evidence: dict[str, Any] = {
        "model": model,
        "mode": mode,
        "window": {"since": as_utc(since).isoformat(), "until": _iso(until)},
        "arms": arms,
        "prediction_shift": _prediction_shift(primary, challenger),
        "agreement": _agreement(primary, challenger, mode),
    }
    if not challenger:
        return CanaryVerdict(WAIT, [f"no {mode} requests for {model!r} in the window"], evidence)
    short = [
        f"{arm}: {s['requests']} requests < min_requests {cfg.min_requests}"
        for arm, s in arms.items()
        if s["requests"] < cfg.min_requests
    ]
    if short:
        return CanaryVerdict(WAIT, short, evidence)
    evidence["guards"] = _guards(arms["primary"], arms[mode], evidence, mode, cfg)
    failed = [g for g in evidence["guards"] if g["passed"] is False]
    if failed:
        return CanaryVerdict(ROLLBACK, [g["detail"] for g in failed], evidence)
    return CanaryVerdict(PROMOTE, ["every guard passed"], evidence)


def _iso(value: datetime | None) -> str:
    return as_utc(value or datetime.now(UTC)).isoformat()


# --- per arm ---------------------------------------------------------------------------------


def _feedback(
    store: RequestStore, since: datetime, rows: list[dict[str, Any]]
) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Feedback on the window's non-shadow requests, by (request id, item). Feedback comes
    after its request, so everything since the window's start is read and matched."""
    wanted = {(r["id"], r["item"]) for r in rows}
    if not wanted:
        return {}
    query = select(
        FeedbackRow.request_id,
        FeedbackRow.item,
        FeedbackRow.rating,
        FeedbackRow.signal,
        FeedbackRow.correction,
    ).where(FeedbackRow.created_at >= as_utc(since))
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with store.engine.connect() as conn:
        for fb in conn.execute(query):
            key = (fb.request_id, fb.item)
            if key in wanted:
                out.setdefault(key, []).append(dict(fb._mapping))
    return out


def _arm_stats(
    rows: list[dict[str, Any]], feedback: dict[tuple[str, int], list[dict[str, Any]]]
) -> dict[str, Any]:
    latency = np.array([r["latency_ms"] for r in rows if r["latency_ms"] is not None])
    errors = sum((r["status_code"] or 0) >= 500 for r in rows)
    labels = [r["predicted_label"] for r in rows if r["predicted_label"] is not None]
    n = len(rows)
    return {
        "requests": n,
        "versions": dict(Counter(r["version"] or "?" for r in rows)),
        "errors": errors,
        "error_rate": errors / n if n else 0.0,
        "latency_ms": {
            f"p{q}": float(np.percentile(latency, q)) if len(latency) else None for q in (50, 95)
        },
        "predictions": {k: v / len(labels) for k, v in sorted(Counter(labels).items())},
        **_feedback_counts(rows, feedback),
    }


def _feedback_counts(
    rows: list[dict[str, Any]], feedback: dict[tuple[str, int], list[dict[str, Any]]]
) -> dict[str, Any]:
    counts = Counter()
    negative = 0
    for row in rows:
        items = feedback.get((row["id"], row["item"]), [])
        bad = False
        for fb in items:
            if fb["signal"] != "explicit":
                counts[fb["signal"]] += 1
                bad = True
                continue
            counts["up"] += fb["rating"] == 1
            counts["down"] += fb["rating"] == -1
            corrected = fb["correction"] is not None and fb["correction"] != row["predicted_label"]
            counts["corrections"] += corrected
            bad = bad or fb["rating"] == -1 or corrected
        negative += bad
    n = len(rows)
    keys = ("up", "down", "corrections", "regenerate", "abandoned")
    return {
        "feedback": {k: int(counts[k]) for k in keys},
        "negative_feedback": negative,
        "negative_rate": negative / n if n else 0.0,
    }


# --- between arms ----------------------------------------------------------------------------


def _prediction_shift(primary: list[dict], challenger: list[dict]) -> dict[str, Any]:
    from honed.monitor.drift import psi

    a = Counter(r["predicted_label"] for r in primary if r["predicted_label"] is not None)
    b = Counter(r["predicted_label"] for r in challenger if r["predicted_label"] is not None)
    if not a or not b:
        return {"tvd": None, "psi": None, "n": [sum(a.values()), sum(b.values())]}
    keys = sorted(set(a) | set(b))
    p = np.array([a[k] for k in keys], dtype=np.float64) / sum(a.values())
    q = np.array([b[k] for k in keys], dtype=np.float64) / sum(b.values())
    eps = max(1e-4, 0.5 / min(sum(a.values()), sum(b.values())))
    return {
        "tvd": float(0.5 * np.abs(p - q).sum()),
        "psi": psi(p, q, eps),
        "n": [sum(a.values()), sum(b.values())],
    }


def _agreement(primary: list[dict], challenger: list[dict], mode: str) -> dict[str, Any]:
    """Share of paired answers that agree: labels when both have one, else output texts."""
    if mode == "shadow":
        mine = {(r["id"], r["item"]): r for r in primary}
        pairs = [(mine[k], r) for r in challenger if (k := (r["id"], r["item"])) in mine]
        basis = "same request id"
    else:
        mine = {r["input_text"]: r for r in primary if r["input_text"]}
        pairs = [(mine[r["input_text"]], r) for r in challenger if r["input_text"] in mine]
        basis = "identical inputs"
    answered = [(a, b) for a, b in pairs if _answer(a) is not None and _answer(b) is not None]
    same = sum(_answer(a) == _answer(b) for a, b in answered)
    return {
        "pairs": len(answered),
        "agreement": same / len(answered) if answered else None,
        "basis": basis,
    }


def _answer(row: dict[str, Any]) -> str | None:
    if row["predicted_label"] is not None:
        return row["predicted_label"]
    text = row["output_text"]
    return " ".join(text.split()).lower() if text else None


# --- guards ----------------------------------------------------------------------------------


def _guard(name: str, passed: bool | None, value: Any, limit: Any, detail: str) -> dict:
    return {"name": name, "passed": passed, "value": value, "limit": limit, "detail": detail}


def _guards(
    primary: dict, challenger: dict, evidence: dict, mode: str, cfg: CanaryConfig
) -> list[dict[str, Any]]:
    return [
        _error_guard(primary, challenger, cfg),
        _latency_guard(primary, challenger, cfg),
        _feedback_guard(primary, challenger, mode, cfg),
        _shift_guard(evidence["prediction_shift"], cfg),
        _agreement_guard(evidence["agreement"], cfg),
    ]


def _error_guard(primary: dict, challenger: dict, cfg: CanaryConfig) -> dict:
    rise = challenger["error_rate"] - primary["error_rate"]
    ok = rise <= cfg.max_error_rate_increase
    return _guard(
        "error_rate",
        ok,
        rise,
        cfg.max_error_rate_increase,
        f"error rate {challenger['error_rate']:.2%} vs primary {primary['error_rate']:.2%} "
        f"(rise {rise:+.2%}, limit {cfg.max_error_rate_increase:.2%})",
    )


def _latency_guard(primary: dict, challenger: dict, cfg: CanaryConfig) -> dict:
    a, b = primary["latency_ms"]["p95"], challenger["latency_ms"]["p95"]
    if a is None or b is None:
        return _guard("latency_p95", None, None, cfg.max_latency_p95_ratio, "no latencies logged")
    ratio = b / a if a > 0 else (1.0 if b <= 0 else math.inf)
    ok = ratio <= cfg.max_latency_p95_ratio or b - a <= cfg.latency_slack_ms
    return _guard(
        "latency_p95",
        ok,
        ratio,
        cfg.max_latency_p95_ratio,
        f"p95 latency {b:.1f} ms vs primary {a:.1f} ms (ratio {ratio:.2f}, limit "
        f"{cfg.max_latency_p95_ratio}, differences under {cfg.latency_slack_ms} ms ignored)",
    )


def _feedback_guard(primary: dict, challenger: dict, mode: str, cfg: CanaryConfig) -> dict:
    if mode == "shadow":
        return _guard(
            "feedback",
            None,
            None,
            cfg.feedback_margin,
            "shadow answers are never shown to users: no feedback to compare",
        )
    p, n_p = primary["negative_rate"], primary["requests"]
    c, n_c = challenger["negative_rate"], challenger["requests"]
    p_value = _worse_by_more_than(c, n_c, p, n_p, cfg.feedback_margin)
    ok = p_value >= cfg.alpha
    return _guard(
        "feedback",
        ok,
        c - p,
        cfg.feedback_margin,
        f"negative feedback {c:.2%} vs primary {p:.2%} (margin {cfg.feedback_margin:.2%}; "
        f"one-sided p = {p_value:.3g}, fails below {cfg.alpha})",
    )


def _worse_by_more_than(c: float, n_c: int, p: float, n_p: int, margin: float) -> float:
    """One-sided p-value of H0: rate_c - rate_p <= margin (two-proportion z-test, unpooled;
    a zero variance is floored at half a count per arm so 0-vs-0 stays defined)."""
    from scipy.stats import norm

    var = max(c * (1 - c), 0.5 / n_c) / n_c + max(p * (1 - p), 0.5 / n_p) / n_p
    z = (c - p - margin) / math.sqrt(var)
    return float(norm.sf(z))


def _shift_guard(shift: dict, cfg: CanaryConfig) -> dict:
    tvd = shift["tvd"]
    if tvd is None:
        return _guard("prediction_shift", None, None, cfg.max_prediction_shift, "no labels logged")
    return _guard(
        "prediction_shift",
        tvd <= cfg.max_prediction_shift,
        tvd,
        cfg.max_prediction_shift,
        f"predicted-label distributions differ by TVD {tvd:.3f} (limit {cfg.max_prediction_shift})",
    )


def _agreement_guard(agreement: dict, cfg: CanaryConfig) -> dict:
    share, pairs = agreement["agreement"], agreement["pairs"]
    if share is None or pairs < cfg.min_agreement_pairs:
        return _guard(
            "agreement",
            None,
            share,
            cfg.min_agreement,
            f"{pairs} paired answers ({agreement['basis']}) < {cfg.min_agreement_pairs}: "
            "not judged",
        )
    return _guard(
        "agreement",
        share >= cfg.min_agreement,
        share,
        cfg.min_agreement,
        f"arms agree on {share:.1%} of {pairs} paired answers ({agreement['basis']}; "
        f"minimum {cfg.min_agreement:.0%})",
    )
