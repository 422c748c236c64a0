"""What starts a loop round: a drift alert, enough new feedback, a schedule (``loop.triggers``).

:func:`evaluate` is pure (the measurements come in as numbers), so the rules are tested without
a request log; :func:`check` measures them from the loop's state and the request log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from honed.errors import HonedError
from honed.pipeline.config import TriggersConfig

logger = logging.getLogger(__name__)


@dataclass
class Measurements:
    """What the triggers look at. ``drift``: status of the drift check over the window since
    the last round (``alert``, ``warn``, ``ok``, ``insufficient_data``, or None when not
    checked) with its alerting components; ``feedback``: new corrections since the last round;
    ``last_started``: when the last round started (None: never)."""

    now: datetime
    drift: str | None = None
    drift_alerts: list[str] | None = None
    feedback: int | None = None
    last_started: datetime | None = None


def _seconds(text: str) -> float:
    from honed.monitor.window import parse_duration

    return parse_duration(text).total_seconds()


def evaluate(cfg: TriggersConfig, m: Measurements) -> dict[str, Any] | None:
    """The trigger that fires (first of drift, feedback, schedule), or None."""
    since_last = (m.now - m.last_started).total_seconds() if m.last_started else None
    if since_last is not None and since_last < _seconds(cfg.min_interval):
        return None
    evidence = {"drift": m.drift, "drift_alerts": m.drift_alerts, "new_feedback": m.feedback}
    if cfg.drift and m.drift == "alert":
        alerts = ", ".join(m.drift_alerts or []) or "alert"
        return {"kind": "drift", "reason": f"drift alert ({alerts})", "evidence": evidence}
    if cfg.min_feedback is not None and (m.feedback or 0) >= cfg.min_feedback:
        reason = f"{m.feedback} new corrections >= {cfg.min_feedback}"
        return {"kind": "feedback", "reason": reason, "evidence": evidence}
    if cfg.every is not None and (since_last is None or since_last >= _seconds(cfg.every)):
        reason = f"schedule: every {cfg.every}" + ("" if since_last else " (first round)")
        return {"kind": "schedule", "reason": reason, "evidence": evidence}
    return None


def manual(reason: str = "honed loop run --once") -> dict[str, Any]:
    return {"kind": "manual", "reason": reason, "evidence": {}}


# --- measuring -----------------------------------------------------------------------------


def last_cursor(rounds: list[dict[str, Any]]) -> datetime | None:
    """Until when the last round collected (its collect step's ``until``): feedback and
    traffic after it are new."""
    from honed.monitor.requestlog import as_utc

    for rnd in reversed(rounds):
        until = ((rnd.get("steps") or {}).get("collect") or {}).get("data", {}).get("until")
        if until:
            return as_utc(datetime.fromisoformat(until))
    return None


def _last_started(rounds: list[dict[str, Any]]) -> datetime | None:
    from honed.monitor.requestlog import as_utc

    return as_utc(datetime.fromisoformat(rounds[-1]["started"])) if rounds else None


def measure(spec: Any, rounds: list[dict[str, Any]], now: datetime) -> Measurements:
    """Drift and feedback since the last round, from the request log of ``loop``."""
    cfg = spec.loop.triggers
    since = last_cursor(rounds)
    m = Measurements(now=now, last_started=_last_started(rounds))
    if cfg.min_feedback is not None:
        m.feedback = count_new_corrections(spec, since)
    if cfg.drift:
        try:
            m.drift, m.drift_alerts = drift_status(spec, since)
        except HonedError as err:  # e.g. no champion yet, or one without a profile
            logger.warning("drift trigger not checked: %s", err)
    return m


def count_new_corrections(spec: Any, since: datetime | None) -> int:
    """New explicit corrections since ``since``. With ``loop.hold_flagged_feedback`` on, the
    rows of keys whose corrections disagree with the others' are not counted: the export holds
    them back, so they must not start a round that would train on nothing new."""
    from honed.monitor.disagreement import judge_keys
    from honed.monitor.feedback import FeedbackStore

    store = FeedbackStore(request_log_url(spec))
    rows = store.joined(since)
    flagged = set()
    if spec.loop.hold_flagged_feedback and rows:
        flagged = {t.key for t in judge_keys(store.joined()) if t.flagged}
    return sum(
        1
        for r in rows
        if (r.get("signal") or "explicit") == "explicit"
        and (r["correction"] or r["preferred"])
        and r.get("key_name") not in flagged
    )


def drift_status(spec: Any, since: datetime | None) -> tuple[str, list[str]]:
    """The drift check (the spec's ``monitor:`` thresholds) over the served model's requests
    since ``since``, against the champion's reference profile."""
    from honed.evals.profile import PROFILE_DIRNAME, ReferenceProfile
    from honed.models.embed import Embedder
    from honed.monitor.requestlog import RequestStore
    from honed.monitor.window import drift_for_window, load_window
    from honed.registry.store import resolve_ref

    champion = resolve_ref(f"{spec.registered_name()}@champion", spec.registry)
    profile = ReferenceProfile.load(champion / PROFILE_DIRNAME)
    store = RequestStore(request_log_url(spec))
    holder: dict[str, Any] = {}
    window = load_window(
        store, since, model=served_model(spec), embedder=_Lazy(holder, Embedder.packaged)
    )
    report = drift_for_window(profile, window, spec.monitor)
    store.save_drift_check(report.to_dict())
    return report.combined_status, [a.name for a in report.alerts() if a.status == "alert"]


class _Lazy:
    """The embedder is loaded only when the window has texts without a cached embedding."""

    def __init__(self, holder: dict[str, Any], factory: Callable[[], Any]):
        self.holder, self.factory = holder, factory

    def encode(self, texts: list[str]) -> Any:
        if "e" not in self.holder:
            self.holder["e"] = self.factory()
        return self.holder["e"].encode(texts)


def served_model(spec: Any) -> str:
    return spec.loop.served_model or spec.registered_name()


def request_log_url(spec: Any) -> str | None:
    """None: the request log's default (``$HONED_HOME/requests.db``)."""
    return spec.loop.request_log_url


def check(spec: Any, home: Any) -> dict[str, Any] | None:
    """The trigger that fires now for the loop at ``home`` (``LoopRunner.check_triggers``)."""
    from honed.pipeline.loop import now

    return evaluate(spec.loop.triggers, measure(spec, home.rounds(), now()))
