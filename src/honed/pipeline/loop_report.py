"""The loop's decisions as text (console) and as one HTML page (``templates/loop_report.html.j2``,
Jinja2 with autoescape, like the monitoring report), both read from the rounds' state files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from honed.pipeline.loop import STEPS, LoopHome, now


def decision_lines(state: dict[str, Any]) -> list[str]:
    """A round's decision and the evidence it rests on, for the console."""
    steps = state.get("steps") or {}
    trigger = state.get("trigger") or {}
    lines = [
        f"decision, round {state.get('round')}: {str(state.get('outcome')).upper()}",
        f"  trigger: {trigger.get('kind')} - {trigger.get('reason', '')}",
    ]
    for name in STEPS:
        record = steps.get(name) or {}
        lines.append(f"  {name:<8} {record.get('outcome', '-'):<14} {record.get('summary', '')}")
    for check in (steps.get("gate") or {}).get("evidence", {}).get("checks") or []:
        mark = "ok  " if check.get("passed") else "FAIL"
        lines.append(
            f"    gate {mark} {check.get('name')}: {check.get('value')} "
            f"(threshold {check.get('threshold')}) {check.get('detail', '')}"
        )
    for reason in (steps.get("canary") or {}).get("evidence", {}).get("reasons") or []:
        lines.append(f"    canary: {reason}")
    return lines


def status_doc(home: LoopHome) -> dict[str, Any]:
    """``honed loop status``: the rounds, the unfinished one, the lock holder."""
    rounds = home.rounds()
    pending = home.unfinished()
    return {
        "loop": str(home.root),
        "rounds": [
            {
                "round": r.get("round"),
                "trigger": (r.get("trigger") or {}).get("kind"),
                "started": r.get("started"),
                "ended": r.get("ended"),
                "outcome": r.get("outcome"),
                "steps": {s: (r["steps"].get(s) or {}).get("outcome") for s in STEPS},
            }
            for r in rounds
        ],
        "unfinished": pending.get("round") if pending else None,
        "report": str(home.report_path) if home.report_path.is_file() else None,
    }


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, default=str, sort_keys=True)


def write_report(home: LoopHome, title: str | None = None) -> Path:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("honed", "templates"), autoescape=True, undefined=StrictUndefined
    )
    env.filters["pretty"] = _pretty
    rounds = home.rounds()
    page = env.get_template("loop_report.html.j2").render(
        title=title or f"honed loop: {home.root.name}",
        stamp=now().strftime("%Y-%m-%d %H:%M UTC"),
        rounds=rounds,
        steps=STEPS,
        decisions={r.get("round"): decision_lines(r) for r in rounds},
    )
    home.root.mkdir(parents=True, exist_ok=True)
    tmp = home.report_path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(home.report_path)
    return home.report_path
