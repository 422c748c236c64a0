"""CLI: ``honed monitor drift``, ``honed monitor report``, ``honed feedback export``,
``honed logs prune``.

Only argparse at import time; each handler imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    monitor = subparsers.add_parser(
        "monitor",
        help="Drift checks and reports on served traffic.",
        description="Compare logged traffic with a model's reference profile (drift, latency, "
        "errors) and write HTML reports.",
    )
    msub = monitor.add_subparsers(dest="monitor_command", metavar="SUBCOMMAND")
    monitor.set_defaults(func=lambda _args: monitor.print_help() or 2)
    _add_drift(msub)
    _add_canary(msub)
    _add_report(msub)

    feedback = subparsers.add_parser(
        "feedback",
        help="User feedback -> training data.",
        description="Turn feedback logged by `honed serve` into data for the next training run.",
    )
    fsub = feedback.add_subparsers(dest="feedback_command", metavar="SUBCOMMAND")
    feedback.set_defaults(func=lambda _args: feedback.print_help() or 2)
    export = fsub.add_parser(
        "export",
        help="Write corrections / preferred answers as jsonl training data.",
        description="Classifier corrections -> {text, label}; generator corrections -> SFT "
        "{prompt, completion}; preferred vs logged answer -> DPO {prompt, chosen, rejected}. "
        "De-duplicated; each row keeps request_id/feedback_id provenance. Feedback of API "
        "keys whose label corrections disagree with the other keys' (or, where no other key "
        "labelled a text, with the model) far beyond the others is held back and listed.",
    )
    export.add_argument("--out", required=True, help="Output .jsonl file.")
    export.add_argument(
        "--keep-flagged",
        action="store_true",
        help="Export the rows of flagged keys too (they are still listed).",
    )
    export.add_argument(
        "--kind",
        choices=["auto", "classification", "sft", "dpo"],
        default="auto",
        help="Which rows; 'auto' writes every kind present (FILE.<kind>.jsonl when several).",
    )
    export.add_argument("--since", help="Only feedback this recent (e.g. 7d).")
    _add_db(export)
    export.set_defaults(func=_feedback_export)
    _add_logs(subparsers)


#: The server's retention setting, the default of `honed logs prune --older-than`.
RETENTION_ENV = "HONED_SERVE_REQUEST_LOG_RETENTION_DAYS"


def _add_logs(subparsers: argparse._SubParsersAction) -> None:
    logs = subparsers.add_parser(
        "logs",
        help="The request log: retention.",
        description="Maintain the request log that `honed serve` writes.",
    )
    lsub = logs.add_subparsers(dest="logs_command", metavar="SUBCOMMAND")
    logs.set_defaults(func=lambda _args: logs.print_help() or 2)
    prune = lsub.add_parser(
        "prune",
        help="Delete requests older than N days, with their feedback.",
        description="Delete request-log rows older than --older-than days, the feedback on "
        "them and feedback rows as old, in small batches (a running server keeps logging). "
        "What `honed serve` does hourly with request_log_retention_days. Export feedback "
        "(`honed feedback export`) before its requests age out: it is exported only with "
        "its request's text.",
    )
    prune.add_argument(
        "--older-than",
        type=float,
        metavar="DAYS",
        help=f"Age in days (fractions allowed); default: ${RETENTION_ENV}.",
    )
    _add_db(prune)
    prune.set_defaults(func=_logs_prune)


def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        help="Request-log database URL (default: sqlite in the state folder; "
        "PostgreSQL: postgresql+psycopg://user@host/db).",
    )


def _add_profile(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--profile", help="Reference profile folder.")
    group.add_argument(
        "--model",
        dest="model_ref",
        help="Model reference (folder, NAME@ALIAS, NAME/VERSION) holding reference_profile/.",
    )


def _add_drift(msub: argparse._SubParsersAction) -> None:
    drift = msub.add_parser(
        "drift",
        help="Check a window of logged traffic against the model's reference profile and "
        "its latency / error-rate objectives.",
        description="Exit code 0: ok/warn/too little data; 1: at least one drift component "
        "alerts or a service objective is breached. Objectives come from the spec's monitor: "
        "objectives section (or --thresholds); the flags below override them.",
    )
    drift.add_argument("--since", default="24h", help="Window length back from now (24h).")
    _add_profile(drift)
    drift.add_argument("--served-model", help="Only requests logged for this served model id.")
    drift.add_argument("--thresholds", help="YAML/JSON file of DriftConfig fields.")
    drift.add_argument(
        "--expect-traffic",
        action="store_true",
        help="An empty window is an alert (the model should be receiving requests).",
    )
    _add_objective_flags(drift)
    drift.add_argument("--webhook", help="POST alerts to this URL.")
    drift.add_argument(
        "--prometheus-textfile",
        help="Write the drift and objective gauges to this file in Prometheus text format "
        "(node-exporter textfile collector).",
    )
    drift.add_argument("--json", action="store_true", help="Print the full result as JSON.")
    drift.add_argument("--no-save", action="store_true", help="Do not store the result.")
    drift.add_argument(
        "--stream",
        action="store_true",
        help="Read the window in chunks with bounded memory (millions of requests): text, "
        "label and confidence components over every row, embedding components over a "
        "uniform sample (--embed-sample); service objectives are not judged.",
    )
    drift.add_argument(
        "--chunk-size", type=int, default=50_000, help="Rows per read with --stream (50000)."
    )
    drift.add_argument(
        "--embed-sample",
        type=int,
        default=10_000,
        help="Texts sampled for the embedding components with --stream (10000).",
    )
    _add_db(drift)
    drift.set_defaults(func=_drift)


# flag -> ObjectivesConfig field (the flags override the spec's monitor.objectives)
_OBJECTIVE_FLAGS = {
    "--latency-p95-ms": "latency_p95_ms",
    "--latency-p99-ms": "latency_p99_ms",
    "--max-error-rate": "max_error_rate",
    "--min-requests": "min_requests",
}


def _add_objective_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("service objectives (override the spec's)")
    group.add_argument("--latency-p95-ms", type=float, help="p95 latency objective (ms).")
    group.add_argument("--latency-p99-ms", type=float, help="p99 latency objective (ms).")
    group.add_argument(
        "--max-error-rate", type=float, help="Largest share of failed requests (0-1)."
    )
    group.add_argument(
        "--min-requests", type=int, help="Fewer requests than this: objectives not judged."
    )


def _add_canary(msub: argparse._SubParsersAction) -> None:
    canary = msub.add_parser(
        "canary",
        help="Compare the challenger's arm (canary or shadow) with the primary: promote, "
        "rollback or wait.",
        description="Reads the request log (and feedback) of one served model over a window, "
        "per arm: error rate, p95 latency, feedback, predicted labels, agreement. Exit code 0: "
        "promote; 1: rollback; 75: wait (too few requests yet). Thresholds: the CanaryConfig "
        "fields (--thresholds FILE, or the spec's canary: section of --spec).",
    )
    canary.add_argument("--model", required=True, help="Served model id (the API's model).")
    canary.add_argument(
        "--since", help="Window length back from now (e.g. 1h); default: the config's window."
    )
    canary.add_argument("--until", help="Window end, back from now (e.g. 10m); default: now.")
    group = canary.add_mutually_exclusive_group()
    group.add_argument("--thresholds", help="YAML/JSON file of CanaryConfig fields.")
    group.add_argument("--spec", help="Run spec whose canary: section to use.")
    canary.add_argument("--json", action="store_true", help="Print the verdict as JSON.")
    _add_db(canary)
    canary.set_defaults(func=_canary)


def _canary_config(args: argparse.Namespace):
    import yaml
    from pydantic import ValidationError

    from honed.errors import HonedError
    from honed.monitor.config import CanaryConfig

    path = args.thresholds or args.spec
    if not path:
        return CanaryConfig()
    file = Path(path)
    if not file.is_file():
        raise HonedError(f"{file}: file not found")
    try:
        doc = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        section = (doc.get("canary") or {}) if args.spec else doc
        return CanaryConfig.model_validate(section)
    except (yaml.YAMLError, ValidationError, AttributeError) as err:
        raise HonedError(f"{file}: invalid canary settings: {err}") from None


def _canary(args: argparse.Namespace) -> int:
    from honed.monitor.canary import PROMOTE, WAIT, analyse_canary
    from honed.monitor.requestlog import RequestStore

    cfg = _canary_config(args)
    since = _since(args.since or cfg.window)
    verdict = analyse_canary(RequestStore(args.db), args.model, since, cfg, _since(args.until))
    print(json.dumps(verdict.to_dict(), indent=2) if args.json else _canary_table(verdict))
    return 0 if verdict.decision == PROMOTE else 75 if verdict.decision == WAIT else 1


def _canary_table(verdict) -> str:
    ev = verdict.evidence
    lines = [f"canary ({ev['mode']} mode, {ev['model']}): {verdict.decision}"]
    lines += [f"  - {reason}" for reason in verdict.reasons]
    for arm, s in ev["arms"].items():
        p95 = s["latency_ms"]["p95"]
        fb = s["feedback"]
        lines.append(
            f"  {arm:<8} {s['requests']:>6} requests  errors {s['error_rate']:.2%}  p95 "
            f"{'-' if p95 is None else f'{p95:.1f} ms'}  feedback +{fb['up']}/-{fb['down']} "
            f"corrections {fb['corrections']} implicit {fb['regenerate'] + fb['abandoned']}  "
            f"versions {', '.join(s['versions']) or '-'}"
        )
    for g in ev.get("guards", []):
        mark = {True: "pass", False: "FAIL", None: "n/a"}[g["passed"]]
        lines.append(f"  [{mark:>4}] {g['name']:<16} {g['detail']}")
    return "\n".join(lines)


def _add_report(msub: argparse._SubParsersAction) -> None:
    report = msub.add_parser(
        "report",
        help="Write a self-contained HTML monitoring report.",
        description="One HTML file (no external assets): traffic, latency percentiles, drift and "
        "feedback rates over the period.",
    )
    report.add_argument("--out", required=True, help="Output .html file.")
    report.add_argument("--since", default="7d", help="Period covered (7d).")
    _add_profile(report)
    _add_db(report)
    report.set_defaults(func=_report)


def _since(text: str | None):
    if not text:
        return None
    from datetime import UTC, datetime

    from honed.monitor.window import parse_duration

    return datetime.now(UTC) - parse_duration(text)


def _load_profile(args: argparse.Namespace, required: bool = True):
    from honed.errors import HonedError
    from honed.evals.profile import PROFILE_DIRNAME, ReferenceProfile

    if args.profile:
        return ReferenceProfile.load(args.profile)
    if args.model_ref:
        from honed.registry.store import resolve_ref

        return ReferenceProfile.load(Path(resolve_ref(args.model_ref)) / PROFILE_DIRNAME)
    if required:
        raise HonedError("name the reference: --profile FOLDER or --model REF")
    return None


def _spec_thresholds(args: argparse.Namespace):
    """The `monitor:` section of the spec the model was trained with, if any."""
    from honed.monitor.drift import DriftConfig

    if not getattr(args, "model_ref", None):
        return DriftConfig()
    import yaml

    from honed.registry.store import resolve_ref

    spec_file = Path(resolve_ref(args.model_ref)) / "spec.yaml"
    if not spec_file.is_file():
        return DriftConfig()
    section = (yaml.safe_load(spec_file.read_text(encoding="utf-8")) or {}).get("monitor") or {}
    return DriftConfig.model_validate(section)


def _drift_config(path: str | None, args: argparse.Namespace | None = None):
    from honed.monitor.drift import DriftConfig

    if not path:
        return _spec_thresholds(args) if args is not None else DriftConfig()
    import yaml
    from pydantic import ValidationError

    from honed.errors import HonedError

    file = Path(path)
    if not file.is_file():
        raise HonedError(f"{file}: thresholds file not found")
    try:
        return DriftConfig.model_validate(yaml.safe_load(file.read_text(encoding="utf-8")) or {})
    except (yaml.YAMLError, ValidationError) as err:
        raise HonedError(f"{file}: invalid thresholds: {err}") from None


def _with_objective_flags(config, args: argparse.Namespace):
    """``config`` with the objective flags given on the command line applied (validated)."""
    from pydantic import ValidationError

    from honed.errors import HonedError
    from honed.monitor.quality import ObjectivesConfig

    fields = _OBJECTIVE_FLAGS.values()
    given = {f: v for f in fields if (v := getattr(args, f, None)) is not None}
    if not given:
        return config
    try:
        objectives = ObjectivesConfig.model_validate({**config.objectives.model_dump(), **given})
    except ValidationError as err:
        flags = {v: k for k, v in _OBJECTIVE_FLAGS.items()}
        why = "; ".join(f"{flags[e['loc'][0]]}: {e['msg']}" for e in err.errors())
        raise HonedError(f"invalid objective: {why}") from None
    return config.model_copy(update={"objectives": objectives})


def _window_objectives(store, since, model: str | None, objectives) -> dict:
    """Latency and error-rate objectives over the drift window's requests (all of them, not
    only those with an input text)."""
    from honed.monitor.quality import service_objectives

    rows = store.fetch(since, model=model, columns=["latency_ms", "status_code", "error"])
    return service_objectives(
        [r["latency_ms"] for r in rows],
        [r["status_code"] for r in rows],
        [r["error"] for r in rows],
        objectives,
    )


def _drift(args: argparse.Namespace) -> int:
    from honed.models.embed import Embedder
    from honed.monitor.drift import ALERT
    from honed.monitor.requestlog import RequestStore
    from honed.monitor.window import drift_for_window, load_window

    profile = _load_profile(args)
    config = _with_objective_flags(_drift_config(args.thresholds, args), args)
    if args.expect_traffic:
        config = config.model_copy(update={"expect_traffic": True})
    store = RequestStore(args.db)
    since = _since(args.since)
    lazy = _LazyEmbedder(Embedder)
    if args.stream:
        report = _streamed(profile, store, since, args, lazy, config)
    else:
        window = load_window(store, since, model=args.served_model, embedder=lazy, dim=profile.dim)
        report = drift_for_window(profile, window, config)
        report.objectives = _window_objectives(store, since, args.served_model, config.objectives)
    if not args.no_save:
        store.save_drift_check(report.to_dict())
    doc = {**report.to_dict(), "combined_status": report.combined_status}
    print(json.dumps(doc, indent=2) if args.json else _table(report, config))
    _send_alerts(report, args)
    return 1 if report.combined_status == ALERT else 0


def _streamed(profile, store, since, args: argparse.Namespace, embedder, config):
    """The drift report of ``honed monitor drift --stream`` (honed.monitor.drift_stream)."""
    from honed.monitor.drift_stream import stream_drift

    return stream_drift(
        profile,
        store,
        since,
        model=args.served_model,
        embedder=embedder,
        config=config,
        chunk_size=args.chunk_size,
        embed_sample=args.embed_sample,
    )


def _send_alerts(report, args: argparse.Namespace) -> None:
    """Drift and objective alerts to the log, the webhook and the Prometheus text file."""
    from honed.monitor.alerts import (
        LogSink,
        PrometheusSink,
        WebhookSink,
        alerts_from_drift,
        alerts_from_objectives,
        dispatch,
    )

    model = args.served_model
    alerts = alerts_from_drift(report, model)
    alerts += alerts_from_objectives(report.objectives or {}, model)
    sinks = [LogSink()] + ([WebhookSink(args.webhook)] if args.webhook else [])
    prometheus = PrometheusSink(model=model or "") if args.prometheus_textfile else None
    errors = dispatch(alerts, sinks + ([prometheus] if prometheus else []), report)
    if prometheus is not None:
        errors += _write_textfile(prometheus, args.prometheus_textfile)
    for err in errors:
        print(f"warning: alert not delivered: {err}", file=sys.stderr)


def _write_textfile(sink, path: str) -> list[str]:
    from prometheus_client import write_to_textfile

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(path, sink.registry)  # atomic: written aside, then renamed
    except OSError as err:
        return [f"PrometheusSink: {path}: {err}"]
    return []


class _LazyEmbedder:
    """Loads the packaged MiniLM only when some text lacks a cached embedding."""

    def __init__(self, factory):
        self.factory, self.model = factory, None

    def encode(self, texts):
        if self.model is None:
            self.model = self.factory.packaged()
        return self.model.encode(texts)


def _table(report, config=None) -> str:
    lines = [f"drift: {report.status} ({report.window_size} requests)"]
    if report.status == "insufficient_data" and config is not None:
        lines[0] += f": fewer than min_window {config.min_window}, nothing judged"
    for c in report.components.values():
        value = "-" if c.value is None else f"{c.value:.3f}"
        null = c.details.get("null")
        p = f"  p {null['p_value']:.2g}" if null else ""
        lines.append(
            f"  {c.name:<18} {c.metric:<11} {value:>8}  warn {_num(c.warn)}  alert "
            f"{_num(c.alert)}  {c.status}{p}"
        )
    lines += _calibration_lines(report.calibration)
    if report.stream:
        s = report.stream
        lines.append(
            f"  streamed: {s['rows']} rows in {s['chunks']} chunks of <= {s['chunk_size']}; "
            f"embedding components on a sample of {s['embedding_sample']} texts"
        )
    if report.objectives:
        lines += _objectives_table(report.objectives)
    return "\n".join(lines)


def _num(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def _calibration_lines(info: dict | None) -> list[str]:
    """How the thresholds above were set (calibrated for the window size, or why not)."""
    if not info:
        return []
    lines = []
    if info.get("calibrated"):
        where = (
            f"; bootstrap windows of {info['drawn_at']} from {info['pool']} held-out texts"
            if "pool" in info
            else ""
        )
        lines.append(
            f"  thresholds calibrated for this window size ({len(info['calibrated'])} "
            f"components, family-wise false-alarm rate {info['false_alarm_rate']}{where})"
        )
    if info.get("reason"):
        lines.append(f"  note: {info['reason']}")
    return lines


def _objectives_table(service: dict) -> list[str]:
    lines = [f"objectives: {service['status']} ({service['n']} requests)"]
    limits, breaches = service["objectives"], service["breaches"]
    judged = service["status"] != "insufficient_data"
    rows = [
        ("latency_p95", "ms", service["latency_ms"]["p95"], limits["latency_p95_ms"]),
        ("latency_p99", "ms", service["latency_ms"]["p99"], limits["latency_p99_ms"]),
        ("error_rate", "share", service["error_rate"], limits["max_error_rate"]),
    ]
    for name, metric, value, limit in rows:
        shown = "-" if value is None else f"{value:.3f}" if metric == "share" else f"{value:.1f}"
        status = "alert" if name in breaches else "ok" if judged else "-"
        lines.append(f"  {name:<18} {metric:<9} {shown:>8}  objective {limit}  {status}")
    return lines


def _report(args: argparse.Namespace) -> int:
    from honed.monitor.feedback import FeedbackStore
    from honed.monitor.report import collect, write_report
    from honed.monitor.requestlog import RequestStore

    profile = _load_profile(args, required=False)
    store = RequestStore(args.db)
    reference = (profile.predictions or profile.labels) if profile else None
    data = collect(
        store, FeedbackStore(engine=store.engine), _since(args.since), reference_labels=reference
    )
    out = write_report(data, args.out)
    print(f"wrote {out}")
    return 0


def _feedback_export(args: argparse.Namespace) -> int:
    from collections import Counter

    from honed.monitor.feedback import FeedbackStore, export_training_data

    skipped: Counter = Counter()
    store = FeedbackStore(args.db)
    report: dict = {}
    written = export_training_data(
        store,
        args.out,
        args.kind,
        _since(args.since),
        skipped,
        hold_flagged=not args.keep_flagged,
        report=report,
    )
    for kind, (path, n) in written.items():
        print(f"{kind}: {n} rows -> {path}")
    for flagged in report.get("flagged_keys", []):
        print(
            f"flagged key {flagged['key']!r}: its {flagged['rows']} labelled rows disagree with "
            f"the others'; {flagged['held_back']} held back",
            file=sys.stderr,
        )
    for why, n in sorted(skipped.items()):
        print(f"skipped {n} feedback rows: {why}")
    return 0


def _logs_prune(args: argparse.Namespace) -> int:
    import os

    from honed.errors import HonedError
    from honed.monitor.requestlog import make_engine, prune

    days = args.older_than
    if days is None and os.environ.get(RETENTION_ENV):
        try:
            days = float(os.environ[RETENTION_ENV])
        except ValueError:
            raise HonedError(
                f"{RETENTION_ENV}={os.environ[RETENTION_ENV]!r} is not a number"
            ) from None
    if days is None:
        raise HonedError(f"how old? pass --older-than DAYS (or set {RETENTION_ENV})")
    if days <= 0:
        raise HonedError(f"--older-than must be > 0 days, got {days}")
    done = prune(make_engine(args.db), days)
    what = f"{done.requests} requests and {done.feedback} feedback rows"
    print(f"pruned {what} older than {days:g} days")
    return 0
