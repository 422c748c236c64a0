"""Pipeline stage config: the retraining loop (the spec's ``loop:`` section).

Core-level on purpose: this module imports nothing above ``honed.config_base`` so ``spec.py``
can compose it like the other stage configs (durations stay strings here and are parsed by the
loop, with ``monitor.window.parse_duration``'s syntax: ``90s``, ``30m``, ``24h``, ``7d``).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from honed.config_base import StrictModel

_DURATION = re.compile(r"^\s*\d+(?:\.\d+)?\s*[smhdw]\s*$")


def _check_duration(value: str | None) -> str | None:
    if value is not None and not _DURATION.match(value):
        raise ValueError(f"bad duration {value!r}: use a number and s/m/h/d/w, e.g. 30m or 24h")
    return value


class TriggersConfig(StrictModel):
    """What starts a round in watch mode (``honed loop run SPEC``). Any one firing starts a
    round; ``--once`` starts one by hand whatever the triggers say."""

    drift: bool = Field(
        True,
        description="Start a round when the drift check (the spec's `monitor:` thresholds) "
        "over the requests logged since the last round reports an alert.",
    )
    min_feedback: int | None = Field(
        50,
        ge=1,
        description="Start a round once at least this many new corrections (feedback with a "
        "corrected label or a preferred answer) arrived since the last round; null: off.",
    )
    every: str | None = Field(
        None,
        description="Start a round on a schedule: this long after the last round started "
        "(e.g. 24h, 7d); null: off.",
    )
    min_interval: str = Field(
        "0s",
        description="Never start two rounds closer than this (a drift alert that persists "
        "while a round is judged does not start another at once).",
    )

    _durations = field_validator("every", "min_interval")(_check_duration)


class LoopCanaryConfig(StrictModel):
    """How the loop starts a canary on the server (``--server``) and how long it waits for
    the canary analysis (the spec's `canary:` thresholds) to decide."""

    weight: float = Field(
        0.2, ge=0.0, le=1.0, description="Share of the traffic the challenger answers (canary)."
    )
    mode: Literal["canary", "shadow"] = Field(
        "canary",
        description="'canary': the challenger answers `weight` of the requests; 'shadow': it "
        "sees a copy of the traffic and its answers are logged, never returned.",
    )
    sticky: str | None = Field(
        None,
        description="Keep a client on one arm: null (random per request), 'api_key' or "
        "'header:X-User-Id'.",
    )
    timeout: str = Field(
        "30m",
        description="Give up waiting for the analysis to decide after this long; the canary "
        "is then rolled back (no decision is not a promotion).",
    )
    poll: str = Field("10s", description="How often the analysis is re-run while it says wait.")

    _durations = field_validator("timeout", "poll")(_check_duration)


class LoopConfig(StrictModel):
    """The closed loop: collect -> train the challenger -> gate -> canary -> promote or roll
    back. State lives in ``$HONED_HOME/loops/NAME/``."""

    triggers: TriggersConfig = Field(default_factory=TriggersConfig)
    poll_seconds: float = Field(
        60.0, gt=0, description="Watch mode: seconds between two looks at the triggers."
    )
    inbox: str | None = Field(
        None,
        description="Folder of new training files (jsonl/csv/json/parquet, the spec's fields); "
        "files that appeared since the last round are added to the round's data. Relative "
        "paths resolve against the spec's folder.",
    )
    served_model: str | None = Field(
        None,
        description="The model's id on the server (request log `model`, admin canary API); "
        "default: the spec's registered name.",
    )
    request_log_url: str | None = Field(
        None,
        description="Request log database (feedback export, drift window); default: "
        "$HONED_HOME/requests.db, as the server writes it.",
    )
    admin_key_env: str = Field(
        "HONED_ADMIN_KEY",
        description="Environment variable holding the server's admin API key (sent as a "
        "Bearer token); unset: no Authorization header.",
    )
    hold_flagged_feedback: bool = Field(
        True,
        description="Leave out of the round's data the feedback of API keys whose label "
        "corrections disagree with the other keys' (or the model's) far beyond the others "
        "(honed.monitor.disagreement); the collect step lists flagged keys either way.",
    )
    canary: LoopCanaryConfig = Field(default_factory=LoopCanaryConfig)
    max_rounds: int | None = Field(
        None, ge=1, description="Watch mode stops after this many rounds; null: runs until killed."
    )
