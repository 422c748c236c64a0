"""The five steps of a loop round (``pipeline/loop.py`` runs them in order and records them).

Each step is idempotent: run again after a crash, it does not repeat what has effects twice
(training resumes from its checkpoints, a canary already running is kept, promotion sets an
alias that may already be set). Calls into the other parts go through ``loop_adapters``.
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from honed.errors import HonedError
from honed.pipeline import loop_adapters as adapters
from honed.pipeline.loop import RoundContext, StepResult, now
from honed.pipeline.triggers import last_cursor, served_model

_INBOX_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


# --- collect -------------------------------------------------------------------------------


def collect(ctx: RoundContext) -> StepResult:
    """Feedback since the last round + new inbox files -> the round's data folder and spec."""
    if "until" not in ctx.progress:
        ctx.save_progress({"until": now().isoformat()})  # a re-run keeps the same cut
    since = last_cursor(ctx.previous_rounds)
    data_dir = ctx.folder / "data"
    new: list[dict[str, Any]] = []
    exported = _export_feedback(ctx, since, data_dir / "feedback.jsonl")
    if exported:
        new.append(exported)
    seen = {s for r in ctx.previous_rounds for s in _collected(r).get("inbox_seen", [])}
    inbox, inbox_seen = _new_inbox_files(ctx, seen, data_dir / "inbox")
    new += inbox
    carried = [f for r in ctx.previous_rounds if r.get("outcome") == "promoted" for f in _new(r)]
    data = {
        "until": ctx.progress["until"],
        "since": since.isoformat() if since else None,
        "new_files": new,
        "carried_files": carried,
        "inbox_seen": sorted(seen | set(inbox_seen)),
    }
    evidence = {"new": {f["path"]: f["rows"] for f in new}, "carried": len(carried)}
    if exported and exported.get("flagged_keys"):
        evidence["flagged_feedback_keys"] = exported["flagged_keys"]
    if not new:
        return StepResult("nothing_new", evidence, data, "no new feedback or inbox files")
    spec_path = _write_round_spec(ctx, carried + new)
    data["spec"] = str(spec_path)
    rows = sum(f["rows"] or 0 for f in new)
    return StepResult("collected", evidence, data, f"{rows} new rows from {len(new)} file(s)")


def _collected(rnd: dict[str, Any]) -> dict[str, Any]:
    return ((rnd.get("steps") or {}).get("collect") or {}).get("data") or {}


def _new(rnd: dict[str, Any]) -> list[dict[str, Any]]:
    return list(_collected(rnd).get("new_files") or [])


def _export_feedback(ctx: RoundContext, since: datetime | None, out: Path) -> dict | None:
    from honed.monitor.feedback import FeedbackStore, export_training_data

    kind = "classification" if ctx.spec.task == "classification" else "auto"
    store = FeedbackStore(ctx.spec.loop.request_log_url)
    report: dict[str, Any] = {}
    hold = ctx.spec.loop.hold_flagged_feedback
    try:
        written = export_training_data(store, out, kind, since, hold_flagged=hold, report=report)
    except HonedError:  # no feedback with corrections since the last round
        return None
    path, n = next(iter(written.values()))
    found = {"path": str(path), "rows": n, "kind": "feedback"}
    if report.get("flagged_keys"):
        found["flagged_keys"] = report["flagged_keys"]
    return found if n else None


def _new_inbox_files(
    ctx: RoundContext, seen: set[str], dest: Path
) -> tuple[list[dict[str, Any]], list[str]]:
    if not ctx.spec.loop.inbox:
        return [], []
    inbox = Path(ctx.spec.loop.inbox).expanduser()
    inbox = inbox if inbox.is_absolute() else ctx.spec.base_dir / inbox
    if not inbox.is_dir():
        raise HonedError(f"loop.inbox: {inbox} is not a folder")
    found, keys = [], []
    for path in sorted(p for p in inbox.iterdir() if p.suffix in _INBOX_SUFFIXES):
        stat = path.stat()
        key = f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}"  # a rewritten file is new
        if key in seen:
            continue
        dest.mkdir(parents=True, exist_ok=True)
        copy = dest / path.name
        shutil.copy2(path, copy)  # the round keeps what it trained on
        found.append({"path": str(copy), "rows": _count_rows(copy), "kind": "data"})
        keys.append(key)
    return found, keys


def _count_rows(path: Path) -> int | None:
    """Rows of a text data file (jsonl lines, csv lines after the header); None: not counted
    here (json, parquet: the data report counts them)."""
    if path.suffix not in (".jsonl", ".csv"):
        return None
    with path.open("rb") as fh:
        lines = sum(1 for line in fh if line.strip())
    return max(lines - (path.suffix == ".csv"), 0)


def _write_round_spec(ctx: RoundContext, files: list[dict[str, Any]]) -> Path:
    """The spec with the round's data, its own run folder, and `challenger` as the only alias
    a new version gets (the champion moves in `decide`, never before)."""
    spec = ctx.spec
    registry = {**spec.registry.model_dump(), "alias_on_register": "challenger"}
    registry["model_name"] = spec.registered_name()
    round_spec = spec.with_overrides(
        data=adapters.data_with_sources(spec, files, ctx.folder),
        registry=registry,
        output_dir=str((ctx.folder / "run").resolve()),
    )
    path = ctx.folder / "spec.yaml"
    path.write_text(yaml.safe_dump(round_spec.model_dump(mode="json"), sort_keys=False))
    return path


def round_spec(ctx: RoundContext) -> Any:
    from honed.spec import parse_spec

    path = Path(ctx.data("collect")["spec"])
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    # Relative paths (a local base, eval files) keep resolving against the original spec.
    return parse_spec(data, source=str(path), path=ctx.spec.path)


# --- train ---------------------------------------------------------------------------------


def train(ctx: RoundContext) -> StepResult:
    """The challenger, registered with alias `challenger` only; resumes from checkpoints."""
    from honed.paths import read_lineage
    from honed.pipeline.run import train_and_evaluate
    from honed.train.common import resume_checkpoint

    if ctx.outcome("collect") == "nothing_new":
        return StepResult("skipped", {"reason": "nothing new to train on"})
    spec = round_spec(ctx)
    run_dir = Path(spec.output_dir)
    found = adapters.registered_run(spec, run_dir)
    if found is not None:  # trained and registered before a crash: never train it again
        version, lineage, failures = found, read_lineage(run_dir), []
        resumed = "registered"
    else:
        resumed = _has_checkpoint(run_dir, resume_checkpoint)
        result = train_and_evaluate(spec, output_dir=run_dir, resume=resumed, overwrite=True)
        version, lineage, failures = result.version, result.lineage, result.gate_failures
    metrics = dict(lineage.get("metrics") or {})
    data = {"run_dir": str(run_dir), "version": version, "resumed": resumed}
    evidence = {"metrics": metrics, "floors_failed": failures or []}
    if version is None:
        failed = "; ".join(failures or []) or "registry disabled"
        return StepResult("not_registered", evidence, data, f"not registered: {failed}")
    data["ref"] = f"{spec.registered_name()}/{version}"
    shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())[:3])
    return StepResult("trained", evidence, data, f"{data['ref']} ({shown})")


def _has_checkpoint(run_dir: Path, finder: Any) -> bool:
    from honed.paths import RunPaths

    try:
        return finder(RunPaths(run_dir), True) is not None
    except HonedError:
        return False


# --- gate ----------------------------------------------------------------------------------


def gate(ctx: RoundContext) -> StepResult:
    """Challenger against champion on the frozen set (never moves an alias)."""
    if ctx.outcome("train") != "trained":
        reason = f"no challenger (train: {ctx.outcome('train')})"
        return StepResult("failed", {"reason": reason}, summary=reason)
    ref = ctx.data("train")["ref"]
    champion = adapters.champion_version(ctx.spec)
    decision = adapters.gate(ctx.spec, ref)
    evidence = {"champion": champion, "checks": decision["checks"], **decision["evidence"]}
    failed = [c for c in decision["checks"] if not c.get("passed")]
    summary = "; ".join(_check_line(c) for c in (failed or decision["checks"]))
    data = {"champion": champion, "challenger": ref}
    return StepResult("passed" if decision["passed"] else "failed", evidence, data, summary)


def _check_line(check: dict[str, Any]) -> str:
    mark = "ok" if check.get("passed") else "FAIL"
    detail = check.get("detail") or f"{check.get('value')} vs {check.get('threshold')}"
    return f"{check.get('name')} {mark} ({detail})"


# --- canary --------------------------------------------------------------------------------


def canary(ctx: RoundContext, sleep: Any = time.sleep) -> StepResult:
    """Start the canary on the server and wait for the analysis to decide (or time out)."""
    from honed.monitor.requestlog import as_utc
    from honed.monitor.window import parse_duration

    if ctx.outcome("gate") != "passed":
        reason = "the gate refused the challenger"
        return StepResult("skipped", {"reason": reason}, summary=reason)
    server = ctx.progress.get("server") or ctx.server
    if not server:
        reason = "no --server: the gate decides"
        return StepResult("skipped", {"reason": reason}, summary=reason)
    cfg, model, ref = ctx.spec.loop.canary, served_model(ctx.spec), ctx.data("train")["ref"]
    admin = adapters.AdminClient(server, ctx.spec.loop.admin_key_env)
    # Posted again after a crash: a canary already running answers 409 and is kept.
    started = admin.start(model, ref, cfg.weight, cfg.mode, cfg.sticky)
    if "since" not in ctx.progress:
        ctx.save_progress({"since": now().isoformat(), "server": server})
    since = as_utc(datetime.fromisoformat(ctx.progress["since"]))
    deadline = since + parse_duration(cfg.timeout)
    data = {"server": server, "model": model, "challenger": ref, "since": since.isoformat()}
    while True:
        verdict = adapters.analyse_canary(ctx.spec, model, since)
        if verdict["decision"] != "wait":
            break
        if now() >= deadline:
            verdict["reasons"] = [*verdict["reasons"], f"no decision within {cfg.timeout}"]
            verdict["decision"] = "timeout"
            break
        sleep(parse_duration(cfg.poll).total_seconds())
    evidence = {"start": started, **verdict}
    return StepResult(verdict["decision"], evidence, data, "; ".join(verdict["reasons"]))


# --- decide --------------------------------------------------------------------------------


def decide(ctx: RoundContext) -> StepResult:
    """Promote (champion alias + server) or reject (server rollback, version tagged)."""
    if ctx.outcome("collect") == "nothing_new":
        return StepResult("skipped", {"reason": "nothing new"}, summary="nothing new")
    gate_ok = ctx.outcome("gate") == "passed"
    canary_ok = ctx.outcome("canary") in ("promote", "skipped")
    evidence = {
        "gate": (ctx.results.get("gate") or {}).get("summary"),
        "canary": (ctx.results.get("canary") or {}).get("summary") or ctx.outcome("canary"),
    }
    if gate_ok and canary_ok:
        return _promote(ctx, evidence)
    return _reject(ctx, evidence, "gate" if not gate_ok else "canary")


def _promote(ctx: RoundContext, evidence: dict[str, Any]) -> StepResult:
    version = ctx.data("train")["version"]
    canary = ctx.data("canary")
    reason = f"loop round {ctx.number}: gate passed" + (
        ", canary passed" if canary else " (no canary)"
    )
    moved = adapters.promote(ctx.spec, version, reason, _evidence_for_history(ctx))
    if canary:
        admin = adapters.AdminClient(canary["server"], ctx.spec.loop.admin_key_env)
        evidence["server"] = admin.promote(canary["model"])
    adapters.tag(ctx.spec, version, {"loop_decision": "promoted", "loop_round": str(ctx.number)})
    evidence.update(moved)
    summary = f"champion {moved.get('previous')} -> {moved['champion']}: {reason}"
    return StepResult("promoted", evidence, {"champion": moved["champion"]}, summary)


def _reject(ctx: RoundContext, evidence: dict[str, Any], by: str) -> StepResult:
    canary = ctx.data("canary")
    if canary:
        admin = adapters.AdminClient(canary["server"], ctx.spec.loop.admin_key_env)
        evidence["server"] = admin.rollback(canary["model"])
    version = ctx.data("train").get("version")
    champion = adapters.champion_version(ctx.spec)
    if version:
        tags = {"loop_decision": "rejected", "rejected": "true", "rejected_by": by}
        adapters.tag(ctx.spec, version, {**tags, "loop_round": str(ctx.number)})
    outcome = "rolled_back" if by == "canary" else "rejected"
    why = evidence.get(by) or "-"
    summary = (
        f"challenger {version or '-'} {outcome} by the {by} ({why}); champion stays {champion}"
    )
    return StepResult(outcome, {**evidence, "champion": champion}, {"champion": champion}, summary)


def _evidence_for_history(ctx: RoundContext) -> dict[str, Any]:
    gate = ctx.results.get("gate") or {}
    canary = ctx.results.get("canary") or {}
    return {
        "loop_round": ctx.number,
        "trigger": ctx.trigger.get("reason"),
        "gate": gate.get("evidence"),
        "canary": {"outcome": canary.get("outcome"), "evidence": canary.get("evidence")},
    }


def ended_at(outcomes: dict[str, str | None]) -> str | None:
    """The step after which the round can no longer promote (nothing collected, no
    challenger, the gate or the canary refused), or None. Later steps still run: they
    record ``skipped`` (``decide`` rejects), as in the embedded loop."""
    over = {
        "collect": lambda o: o == "nothing_new",
        "train": lambda o: o != "trained",
        "gate": lambda o: o != "passed",
        "canary": lambda o: o not in ("promote", "skipped"),
    }
    for step, ends in over.items():
        if step in outcomes and ends(outcomes[step]):
            return step
    return None


STEPS = {"collect": collect, "train": train, "gate": gate, "canary": canary, "decide": decide}
