"""One self-contained HTML report: plots as inline base64 PNGs (matplotlib), no scripts, no
CDN, readable offline. The page is the Jinja2 template ``honed/templates/report.html.j2``,
rendered with autoescape on; this module computes what it shows.

Sections: summary, drift over time, per-component PSI of the latest check, latency
percentiles over time, feedback rates, predicted-label distribution (vs the reference).
"""

from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from honed.monitor.requestlog import as_utc

_TRACKED = (  # (component, label) plotted over time
    ("embedding_cells", "cells PSI"),
    ("embedding_pca", "PCA PSI (mean)"),
    ("text_length", "length PSI"),
    ("predictions", "prediction PSI"),
    ("domain_classifier", "domain AUC - 0.5 (alert at 0.1)"),
)


@dataclass
class ReportData:
    """What the report shows. ``drift``: stored checks ({created_at, status, result});
    ``requests``: rows with created_at, latency_ms, status_code, error, predicted_label;
    ``feedback``: rows with created_at, rating, signal (explicit, or an implicit regenerate /
    abandoned), correction, preferred, comment."""

    drift: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    reference_labels: dict[str, float] | None = None
    title: str = "honed monitoring report"


def collect(store, feedback_store=None, since: datetime | None = None, **kw) -> ReportData:
    """Report data from a RequestStore (+ FeedbackStore) since ``since``."""
    cols = ["id", "created_at", "latency_ms", "status_code", "error", "predicted_label"]
    cols += ["output_text"]
    feedback = feedback_store.joined(since) if feedback_store is not None else []
    return ReportData(
        drift=store.drift_history(since),
        requests=store.fetch(since=since, columns=cols),
        feedback=feedback,
        **kw,
    )


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig, ax


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", transform=ax.transAxes)


def plot_drift_over_time(checks: Sequence[dict[str, Any]]) -> str:
    fig, ax = _figure("Drift over time")
    if not checks:
        _no_data(ax, "drift checks")
        return _png(fig)
    times = [_check_time(c) for c in checks]
    for name, label in _TRACKED:
        values = [_component_value(c["result"], name) for c in checks]
        if any(v is not None for v in values):
            ys = [np.nan if v is None else v for v in values]
            ax.plot(times, ys, marker="o", label=label)
    ax.axhline(0.1, color="orange", ls="--", lw=1, label="PSI warn 0.1")
    ax.axhline(0.2, color="red", ls="--", lw=1, label="PSI alert 0.2")
    ax.legend(fontsize=7, loc="upper left")
    fig.autofmt_xdate()
    return _png(fig)


def _check_time(check: dict[str, Any]) -> datetime:
    """End of the checked window when recorded (replays, backfills), else the check time."""
    end = (check.get("result") or {}).get("window_end")
    return as_utc(datetime.fromisoformat(end)) if end else as_utc(check["created_at"])


def _component_value(result: dict[str, Any], name: str) -> float | None:
    comp = result.get("components", {}).get(name)
    if not comp or comp.get("value") is None:
        return None
    return comp["value"] - 0.5 if name == "domain_classifier" else comp["value"]


def plot_component_psi(check: dict[str, Any] | None) -> str:
    fig, ax = _figure("PSI per component (latest check)")
    comps = (check or {}).get("result", {}).get("components", {})
    names, values = [], []
    for name, comp in comps.items():
        if comp.get("metric") == "psi" and comp.get("value") is not None:
            names.append(name)
            values.append(comp["value"])
    pca = comps.get("embedding_pca", {}).get("details", {}).get("per_component_psi", [])
    names += [f"PC{i + 1}" for i in range(len(pca))]
    values += list(pca)
    if not names:
        _no_data(ax, "PSI values")
        return _png(fig)
    colors = ["red" if v >= 0.2 else "orange" if v >= 0.1 else "tab:blue" for v in values]
    ax.bar(names, values, color=colors)
    ax.axhline(0.1, color="orange", ls="--", lw=1)
    ax.axhline(0.2, color="red", ls="--", lw=1)
    ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    return _png(fig)


def _buckets(times: Sequence[datetime], n_max: int = 48) -> tuple[np.ndarray, list[datetime]]:
    """Bucket index per time and bucket start times (at most n_max equal-width buckets)."""
    secs = np.array([as_utc(t).timestamp() for t in times])
    lo, hi = secs.min(), secs.max()
    width = max((hi - lo) / n_max, 60.0)
    idx = np.minimum(((secs - lo) // width).astype(int), n_max - 1)
    starts = [datetime.fromtimestamp(lo + i * width, UTC) for i in range(idx.max() + 1)]
    return idx, starts


def plot_latency(requests: Sequence[dict[str, Any]]) -> str:
    fig, ax = _figure("Latency percentiles (ms)")
    rows = [r for r in requests if r.get("latency_ms") is not None]
    if not rows:
        _no_data(ax, "requests")
        return _png(fig)
    idx, starts = _buckets([r["created_at"] for r in rows])
    lat = np.array([r["latency_ms"] for r in rows], dtype=np.float64)
    for q in (50, 95, 99):
        ys = [
            np.percentile(lat[idx == b], q) if (idx == b).any() else np.nan
            for b in range(len(starts))
        ]
        ax.plot(starts, ys, marker=".", label=f"p{q}")
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    return _png(fig)


def plot_feedback(feedback: Sequence[dict[str, Any]], n_requests: int) -> str:
    """Per-request rates: explicit feedback (green), implicit signals (orange)."""
    from honed.monitor.feedback import feedback_summary

    fig, ax = _figure("Feedback")
    summary = feedback_summary(list(feedback), n_requests)
    explicit = {
        "thumbs up": summary["explicit"]["up"],
        "thumbs down": summary["explicit"]["down"],
        "correction": summary["explicit"]["correction"],
    }
    implicit = {f"{k} (implicit)": v for k, v in summary["implicit"].items()}
    bars = {k: v for k, v in {**explicit, **implicit}.items() if v}
    if not bars:
        _no_data(ax, "feedback")
        return _png(fig)
    colors = ["tab:orange" if k.endswith("(implicit)") else "tab:green" for k in bars]
    ax.bar(list(bars), [v / max(n_requests, 1) for v in bars.values()], color=colors)
    ax.set_ylabel("per request")
    return _png(fig)


def plot_labels(requests: Sequence[dict[str, Any]], reference: dict[str, float] | None) -> str:
    fig, ax = _figure("Predicted label distribution")
    labels = [r["predicted_label"] for r in requests if r.get("predicted_label") is not None]
    if not labels and not reference:
        _no_data(ax, "predicted labels")
        return _png(fig)
    counts = Counter(labels)
    names = sorted(set(counts) | set(reference or {}))
    x = np.arange(len(names))
    window = [counts[n] / max(len(labels), 1) for n in names]
    ax.bar(x - 0.2, window, width=0.4, label="window")
    if reference:
        ax.bar(x + 0.2, [reference.get(n, 0.0) for n in names], width=0.4, label="reference")
    ax.set_xticks(x, names)
    ax.legend(fontsize=7)
    return _png(fig)


def _summary_rows(data: ReportData) -> list[tuple[str, str]]:
    n = len(data.requests)
    errors = sum((r.get("status_code") or 0) >= 500 or bool(r.get("error")) for r in data.requests)
    lat = [r["latency_ms"] for r in data.requests if r.get("latency_ms") is not None]
    latest = data.drift[-1] if data.drift else None
    rows = [
        ("requests", str(n)),
        ("error rate", f"{errors / n:.2%}" if n else "-"),
        ("latency p95", f"{np.percentile(lat, 95):.1f} ms" if lat else "-"),
        *_feedback_rows(data.feedback, n),
        ("drift checks", str(len(data.drift))),
        ("latest drift status", latest["status"] if latest else "-"),
    ]
    return rows


def _feedback_rows(feedback: list[dict[str, Any]], n: int) -> list[tuple[str, str]]:
    """Explicit feedback and each implicit signal apart (the latter are weak signals)."""
    from honed.monitor.feedback import feedback_summary

    summary = feedback_summary(feedback, n)
    exp, rates = summary["explicit"], summary["rates"]
    rows = [
        (
            "feedback (explicit)",
            f"{exp['n']} (up {exp['up']}, down {exp['down']}, corrections {exp['correction']})",
        )
    ]
    for signal, count in summary["implicit"].items():
        rate = f" ({rates[signal]:.2%} of requests)" if n else ""
        rows.append((f"{signal} (implicit)", f"{count}{rate}"))
    return rows


def _quality_rows(data: ReportData) -> list[tuple[str, str]]:
    """Service objectives and generated-output checks (rows without a predicted label)."""
    from honed.monitor.quality import generation_quality, service_objectives

    rows = data.requests
    slo = service_objectives(
        [r.get("latency_ms") for r in rows],
        [r.get("status_code") for r in rows],
        [r.get("error") for r in rows],
    )
    lat = slo["latency_ms"]
    cells = [(k, "-" if v is None else f"{v:.1f} ms") for k, v in lat.items()]
    cells += [("error rate", f"{slo['error_rate']:.2%}")]
    cells += [("objectives breached", ", ".join(slo["breaches"]) or "none")]
    generated = [r.get("output_text") for r in rows if r.get("predicted_label") is None]
    if generated:
        gen = generation_quality(generated)
        flags = ", ".join(f"{k} {v:.1%}" for k, v in gen["rates"].items()) or "none"
        cells += [("generated outputs", str(gen["n"])), ("output flags", flags)]
    return cells


def _component_rows(check: dict[str, Any] | None) -> list[dict[str, str]] | None:
    """One row per drift component of the latest check; None when no check is stored."""
    if not check:
        return None
    return [
        {
            "name": name,
            "metric": c["metric"],
            "value": "-" if c.get("value") is None else f"{c['value']:.3f}",
            "warn": str(c.get("warn")),
            "alert": str(c.get("alert")),
            "status": c["status"],
        }
        for name, c in check["result"].get("components", {}).items()
    ]


@cache
def _template() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("honed", "templates"), autoescape=True, undefined=StrictUndefined
    )
    return env.get_template("report.html.j2")


def render_html(data: ReportData) -> str:
    latest = data.drift[-1] if data.drift else None
    figures = [
        ("Drift over time", plot_drift_over_time(data.drift)),
        ("PSI per component", plot_component_psi(latest)),
        ("Latency", plot_latency(data.requests)),
        ("Feedback", plot_feedback(data.feedback, len(data.requests))),
        ("Labels", plot_labels(data.requests, data.reference_labels)),
    ]
    return _template().render(
        title=data.title,
        stamp=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        summary=_summary_rows(data),
        components=_component_rows(latest),
        quality=_quality_rows(data),
        figures=figures,
    )


def write_report(data: ReportData, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(data), encoding="utf-8")
    return out
