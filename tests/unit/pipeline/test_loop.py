"""The loop's state machine with fake steps: resume after a crash at each step, the lock, the
triggers, the decisions; and the real collect/decide/canary steps with fake adapters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from honed.cli import main
from honed.pipeline import loop_steps, triggers
from honed.pipeline.config import LoopConfig, TriggersConfig
from honed.pipeline.loop import (
    STEPS,
    LoopHome,
    LoopLock,
    LoopLockedError,
    LoopRunner,
    Round,
    RoundContext,
    StepResult,
    lock_for,
)
from honed.pipeline.loop_report import decision_lines, write_report
from honed.spec import parse_spec


class Crash(Exception):
    """Stands in for a kill: the step never returns, nothing records its end."""


def _spec(tmp_path: Path, **loop) -> object:
    data = tmp_path / "data.jsonl"
    rows = [{"text": f"text {i}", "label": "a" if i % 2 else "b"} for i in range(20)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = {
        "name": "loopy",
        "model": {"base": str(tmp_path / "no-model")},
        "data": {"source": str(data)},
        "loop": {"request_log_url": f"sqlite:///{tmp_path / 'requests.db'}", **loop},
    }
    return parse_spec(doc, path=tmp_path / "spec.yaml")


def _fake_steps(calls: dict[str, int], crash_at: str | None = None, outcomes=None):
    outcomes = outcomes or {}

    def make(name: str):
        def step(ctx: RoundContext) -> StepResult:
            calls[name] = calls.get(name, 0) + 1
            # every earlier step's data is there, whether it ran now or before the crash
            for earlier in STEPS[: STEPS.index(name)]:
                assert ctx.data(earlier) == {"from": earlier}
            if name == crash_at and calls[name] == 1:
                raise Crash(name)
            return StepResult(outcomes.get(name, "done"), {"n": 1}, {"from": name}, name)

        return step

    return {name: make(name) for name in STEPS}


def _runner(spec, steps, home, **kw) -> LoopRunner:
    return LoopRunner(spec, steps, home, say=lambda _m: None, **kw)


@pytest.mark.parametrize("crash_at", STEPS)
def test_resume_after_a_crash_never_reruns_a_finished_step(tmp_path, crash_at) -> None:
    spec = _spec(tmp_path)
    home = LoopHome(tmp_path / "loop")
    calls: dict[str, int] = {}
    steps = _fake_steps(calls, crash_at)
    with pytest.raises(Crash):
        _runner(spec, steps, home).run_once(triggers.manual())
    state = home.unfinished()
    assert state is not None and state["steps"][crash_at]["status"] == "running"
    finished = STEPS[: STEPS.index(crash_at)]
    assert Round.load(home.round_dir(1)).finished_steps() == list(finished)

    final = _runner(spec, steps, home).resume_unfinished()

    assert final["ended"] and final["outcome"] == "done"
    # finished steps ran once; the interrupted one twice (its first run never finished)
    assert calls == {s: 2 if s == crash_at else 1 for s in STEPS}
    assert {s: r["attempts"] for s, r in final["steps"].items()} == calls
    assert home.unfinished() is None
    assert _runner(spec, steps, home).resume_unfinished() is None  # nothing left to do
    assert calls == {s: 2 if s == crash_at else 1 for s in STEPS}


def test_state_records_each_step_with_times_outcome_and_evidence(tmp_path) -> None:
    home = LoopHome(tmp_path / "loop")
    _runner(_spec(tmp_path), _fake_steps({}), home).run_once(triggers.manual())
    state = json.loads((home.round_dir(1) / "state.json").read_text())
    assert state["trigger"]["kind"] == "manual"
    for name in STEPS:
        record = state["steps"][name]
        assert record["status"] == "done" and record["outcome"] == "done"
        assert record["started"] <= record["ended"] and record["evidence"] == {"n": 1}
    assert not list(home.round_dir(1).glob(".*.tmp"))  # atomic writes leave no temporaries


def test_progress_saved_by_an_interrupted_step_is_handed_back(tmp_path) -> None:
    home = LoopHome(tmp_path / "loop")
    seen: list[dict] = []

    def canary(ctx: RoundContext) -> StepResult:
        seen.append(dict(ctx.progress))
        if not ctx.progress:
            ctx.save_progress({"since": "t0"})
            raise Crash("canary")
        return StepResult("promote", data={"from": "canary"})

    steps = {**_fake_steps({}), "canary": canary}
    with pytest.raises(Crash):
        _runner(_spec(tmp_path), steps, home).run_once(triggers.manual())
    _runner(_spec(tmp_path), steps, home).resume_unfinished()
    assert seen == [{}, {"since": "t0"}]


def test_rounds_are_numbered_and_the_report_shows_them(tmp_path) -> None:
    home = LoopHome(tmp_path / "loop")
    outcomes = {"gate": "failed", "decide": "rejected"}
    runner = _runner(_spec(tmp_path), _fake_steps({}, outcomes=outcomes), home)
    runner.run_once(triggers.manual())
    runner.run_once({"kind": "drift", "reason": "drift alert (domain_classifier)"})
    assert [r["round"] for r in home.rounds()] == [1, 2]
    html = write_report(home).read_text()
    assert "drift alert (domain_classifier)" in html and "rejected" in html
    assert decision_lines(home.rounds()[0])[0] == "decision, round 1: REJECTED"


# --- the lock ------------------------------------------------------------------------------


def test_a_second_lock_holder_is_refused_with_pid_and_host(tmp_path) -> None:
    path = tmp_path / "m.lock"
    with LoopLock(path), pytest.raises(LoopLockedError, match=f"pid {os.getpid()} on "):
        LoopLock(path).acquire()
    with LoopLock(path) as again:  # released: free again, and not reported stale
        assert again.stale_holder is None


def test_a_lock_left_by_a_killed_loop_is_detected_as_stale(tmp_path) -> None:
    path = tmp_path / "m.lock"
    code = (
        "import os, sys; from pathlib import Path; from honed.pipeline.loop import LoopLock;"
        "LoopLock(Path(sys.argv[1])).acquire(); os._exit(9)"  # dies holding it
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    assert subprocess.run([sys.executable, "-c", code, str(path)], env=env).returncode == 9
    assert json.loads(path.read_text())["pid"]
    with LoopLock(path) as lock:
        assert lock.stale_holder is not None and lock.stale_holder["pid"] != os.getpid()


def test_a_second_loop_on_the_same_model_exits_with_a_clear_message(tmp_path, capsys) -> None:
    spec = _spec(tmp_path)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps(spec.model_dump(mode="json")))
    with lock_for(spec):
        assert main(["loop", "run", str(spec_file), "--once"]) == 2
    err = capsys.readouterr().err
    assert "another loop is running for this model" in err and str(os.getpid()) in err
    assert not (LoopHome.for_spec(spec).root / "rounds").exists()  # nothing started


# --- triggers ------------------------------------------------------------------------------

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def test_drift_alert_fires_and_warn_does_not() -> None:
    cfg = TriggersConfig(min_feedback=None)
    fired = triggers.evaluate(cfg, triggers.Measurements(NOW, "alert", ["domain_classifier"]))
    assert fired["kind"] == "drift" and "domain_classifier" in fired["reason"]
    for status in ("warn", "ok", "insufficient_data", None):
        assert triggers.evaluate(cfg, triggers.Measurements(NOW, status)) is None
    off = TriggersConfig(drift=False, min_feedback=None)
    assert triggers.evaluate(off, triggers.Measurements(NOW, "alert")) is None


def test_feedback_volume_fires_at_the_threshold() -> None:
    cfg = TriggersConfig(drift=False, min_feedback=10)
    assert triggers.evaluate(cfg, triggers.Measurements(NOW, feedback=9)) is None
    assert triggers.evaluate(cfg, triggers.Measurements(NOW, feedback=10))["kind"] == "feedback"


def test_schedule_and_min_interval() -> None:
    cfg = TriggersConfig(drift=True, min_feedback=None, every="24h", min_interval="1h")
    first = triggers.evaluate(cfg, triggers.Measurements(NOW))
    assert first["kind"] == "schedule"
    recent = triggers.Measurements(NOW, "alert", last_started=NOW - timedelta(minutes=30))
    assert triggers.evaluate(cfg, recent) is None  # inside min_interval, even on an alert
    later = triggers.Measurements(NOW, last_started=NOW - timedelta(hours=23))
    assert triggers.evaluate(cfg, later) is None
    due = triggers.Measurements(NOW, last_started=NOW - timedelta(hours=24))
    assert triggers.evaluate(cfg, due)["kind"] == "schedule"


def test_bad_durations_are_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="bad duration"):
        LoopConfig.model_validate({"triggers": {"every": "daily"}})


def test_watch_polls_until_a_trigger_fires(tmp_path) -> None:
    answers = [None, None, {"kind": "feedback", "reason": "12 new corrections >= 10"}]
    slept: list[float] = []
    spec = _spec(tmp_path, poll_seconds=7)
    runner = _runner(
        spec,
        _fake_steps({}),
        LoopHome(tmp_path / "loop"),
        check_triggers=lambda _s, _h: answers.pop(0),
        sleep=slept.append,
    )
    rounds = runner.watch(max_rounds=1)
    assert slept == [7, 7] and rounds[0]["trigger"]["kind"] == "feedback"


def test_new_feedback_is_counted_from_the_last_rounds_cut(tmp_path) -> None:
    from sqlalchemy import insert

    from honed.monitor.requestlog import FeedbackRow, RequestLogger

    spec = _spec(tmp_path)
    logger = RequestLogger(spec.loop.request_log_url)
    times = [NOW - timedelta(hours=2), NOW, NOW]
    for i, when in enumerate(times):
        logger.submit(
            {"id": f"r{i}", "input_text": f"t{i}", "predicted_label": "a", "created_at": when}
        )
    logger.flush()
    rows = [
        {
            "request_id": f"r{i}",
            "item": 0,
            "created_at": when,
            "signal": "explicit",
            "correction": "b",
        }
        for i, when in enumerate(times)
    ]
    rows.append(
        {
            "request_id": "r1",
            "item": 0,
            "created_at": NOW,
            "signal": "regenerate",
            "correction": None,
        }
    )
    with logger.engine.begin() as conn:
        conn.execute(insert(FeedbackRow), rows)
    logger.close()
    assert triggers.count_new_corrections(spec, None) == 3  # implicit signals never count
    cut = [{"steps": {"collect": {"data": {"until": (NOW - timedelta(hours=1)).isoformat()}}}}]
    assert triggers.count_new_corrections(spec, triggers.last_cursor(cut)) == 2


def test_new_feedback_of_flagged_keys_does_not_fire_the_trigger(tmp_path, monkeypatch) -> None:
    """The export holds a flagged key's rows back, so they must not start a round either."""
    from sqlalchemy import insert

    from honed.monitor import disagreement
    from honed.monitor.requestlog import FeedbackRow, RequestLogger

    spec = _spec(tmp_path)
    logger = RequestLogger(spec.loop.request_log_url)
    for i in range(4):
        logger.submit({"id": f"r{i}", "input_text": f"t{i}", "predicted_label": "a"})
    logger.flush()
    keys = ["honest", "flipper", "flipper", "flipper"]
    rows = [
        {
            "request_id": f"r{i}",
            "item": 0,
            "created_at": NOW,
            "signal": "explicit",
            "correction": "b",
            "key_name": k,
        }
        for i, k in enumerate(keys)
    ]
    with logger.engine.begin() as conn:
        conn.execute(insert(FeedbackRow), rows)
    logger.close()

    class Flagged:
        key, flagged = "flipper", True

    monkeypatch.setattr(disagreement, "judge_keys", lambda rows: [Flagged()])
    assert triggers.count_new_corrections(spec, None) == 1
    loop = spec.loop.model_copy(update={"hold_flagged_feedback": False})
    spec = spec.model_copy(update={"loop": loop})  # exported anyway: counted too
    assert triggers.count_new_corrections(spec, None) == 4


# --- the real steps with fake adapters -----------------------------------------------------


def _ctx(tmp_path, spec, results=None, progress=None, server=None) -> RoundContext:
    folder = tmp_path / "round"
    folder.mkdir(exist_ok=True)
    saved: dict = {}
    ctx = RoundContext(spec, 1, folder, {"reason": "test"}, server, results or {}, [])
    ctx.progress = progress or {}
    ctx.save_progress = lambda p: (saved.update(p), setattr(ctx, "progress", dict(p)))
    return ctx


class FakeAdmin:
    calls: list = []  # noqa: RUF012

    def __init__(self, server, key_env=None):
        self.server = server

    def start(self, *args):
        FakeAdmin.calls.append(("start", *args))
        return {"status": 201}

    def promote(self, model):
        FakeAdmin.calls.append(("promote", model))
        return {"status": 200}

    def rollback(self, model):
        FakeAdmin.calls.append(("rollback", model))
        return {"status": 200}


@pytest.fixture
def fake_adapters(monkeypatch):
    moves: list = []
    tags: list = []
    FakeAdmin.calls = []
    a = loop_steps.adapters
    monkeypatch.setattr(a, "AdminClient", FakeAdmin)
    monkeypatch.setattr(
        a, "promote", lambda s, v, r, e: moves.append(v) or {"champion": v, "previous": "1"}
    )
    monkeypatch.setattr(a, "tag", lambda s, v, t: tags.append((v, t)))
    monkeypatch.setattr(a, "champion_version", lambda s: "1")
    return moves, tags


def _done(outcome: str, data: dict | None = None, summary: str = "") -> dict:
    return {"status": "done", "outcome": outcome, "data": data or {}, "summary": summary}


TRAINED = _done("trained", {"version": "2", "ref": "loopy/2"})


def test_decide_promotes_only_when_gate_and_canary_pass(tmp_path, fake_adapters) -> None:
    moves, tags = fake_adapters
    spec = _spec(tmp_path)
    canary = _done("promote", {"server": "http://s", "model": "loopy"})
    results = {"collect": _done("collected"), "train": TRAINED, "gate": _done("passed")}
    result = loop_steps.decide(_ctx(tmp_path, spec, {**results, "canary": canary}))
    assert result.outcome == "promoted" and moves == ["2"]
    assert ("promote", "loopy") in FakeAdmin.calls
    assert tags[-1][1]["loop_decision"] == "promoted"


@pytest.mark.parametrize(
    ("gate", "canary", "outcome"),
    [("failed", "skipped", "rejected"), ("passed", "rollback", "rolled_back")],
)
def test_decide_never_moves_the_champion_on_a_refusal(
    tmp_path, fake_adapters, gate, canary, outcome
) -> None:
    moves, tags = fake_adapters
    canary_data = {"server": "http://s", "model": "loopy"} if canary != "skipped" else {}
    results = {
        "collect": _done("collected"),
        "train": TRAINED,
        "gate": _done(gate, summary="accuracy FAIL"),
        "canary": _done(canary, canary_data, "error rate up"),
    }
    result = loop_steps.decide(_ctx(tmp_path, _spec(tmp_path), results))
    assert result.outcome == outcome and moves == []
    assert tags == [("2", tags[0][1])] and tags[0][1]["rejected"] == "true"
    assert (("rollback", "loopy") in FakeAdmin.calls) == (canary == "rollback")
    assert "champion stays 1" in result.summary


def test_no_server_skips_the_canary_and_the_gate_decides(tmp_path, fake_adapters) -> None:
    moves, _ = fake_adapters
    spec = _spec(tmp_path)
    results = {"collect": _done("collected"), "train": TRAINED, "gate": _done("passed")}
    skipped = loop_steps.canary(_ctx(tmp_path, spec, results))
    assert skipped.outcome == "skipped" and "no --server" in skipped.evidence["reason"]
    results["canary"] = {"status": "done", "outcome": "skipped", "data": {}}
    assert loop_steps.decide(_ctx(tmp_path, spec, results)).outcome == "promoted"
    assert moves == ["2"] and FakeAdmin.calls == []


def test_canary_waits_for_a_decision_then_reports_it(tmp_path, fake_adapters, monkeypatch) -> None:
    verdicts = [
        {"decision": "wait", "reasons": ["too few requests"], "evidence": {}},
        {"decision": "rollback", "reasons": ["error rate +4 points"], "evidence": {"x": 1}},
    ]
    monkeypatch.setattr(loop_steps.adapters, "analyse_canary", lambda *a: verdicts.pop(0))
    spec = _spec(tmp_path)
    results = {"collect": _done("collected"), "train": TRAINED, "gate": _done("passed")}
    ctx = _ctx(tmp_path, spec, results, server="http://s")
    slept: list = []
    result = loop_steps.canary(ctx, sleep=slept.append)
    assert result.outcome == "rollback" and slept == [10.0]
    assert result.data["server"] == "http://s" and "since" in ctx.progress
    assert FakeAdmin.calls[0][:3] == ("start", "loopy", "loopy/2")


def test_canary_without_a_decision_times_out(tmp_path, fake_adapters, monkeypatch) -> None:
    wait = {"decision": "wait", "reasons": ["too few requests"], "evidence": {}}
    monkeypatch.setattr(loop_steps.adapters, "analyse_canary", lambda *a: dict(wait))
    spec = _spec(tmp_path)
    results = {"collect": _done("collected"), "train": TRAINED, "gate": _done("passed")}
    long_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    ctx = _ctx(tmp_path, spec, results, progress={"since": long_ago, "server": "http://s"})
    result = loop_steps.canary(ctx, sleep=lambda _s: None)
    assert result.outcome == "timeout" and "no decision within 30m" in result.summary


def test_collect_takes_new_inbox_files_once_and_builds_the_round_spec(tmp_path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "new.jsonl").write_text(json.dumps({"text": "fresh text", "label": "a"}) + "\n")
    spec = _spec(tmp_path, inbox="inbox")
    first = loop_steps.collect(_ctx(tmp_path, spec))
    assert first.outcome == "collected" and first.data["new_files"][0]["rows"] == 1
    round_spec = loop_steps.round_spec(_ctx(tmp_path, spec, {"collect": {"data": first.data}}))
    assert round_spec.registry.alias_on_register == "challenger"
    assert Path(round_spec.output_dir) == (tmp_path / "round" / "run").resolve()
    previous = {"round": 1, "outcome": "promoted", "steps": {"collect": {"data": first.data}}}
    ctx = _ctx(tmp_path, spec)
    ctx.previous_rounds = [previous]
    again = loop_steps.collect(ctx)
    assert again.outcome == "nothing_new" and again.data["carried_files"] == first.data["new_files"]
    assert loop_steps.train(_ctx(tmp_path, spec, {"collect": _done("nothing_new")})).outcome == (
        "skipped"
    )


def test_status_lists_rounds_and_the_unfinished_one(tmp_path, capsys) -> None:
    spec = _spec(tmp_path)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps(spec.model_dump(mode="json")))
    home = LoopHome.for_spec(spec)
    assert main(["loop", "status", str(spec_file)]) == 0
    assert "no rounds yet" in capsys.readouterr().out
    _runner(spec, _fake_steps({}, outcomes={"decide": "promoted"}), home).run_once(
        triggers.manual()
    )
    with pytest.raises(Crash):
        _runner(spec, _fake_steps({}, crash_at="gate"), home).run_once(triggers.manual())
    assert main(["loop", "status", str(spec_file), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["outcome"] for r in doc["rounds"]] == ["promoted", None]
    assert doc["unfinished"] == 2 and doc["rounds"][1]["steps"]["train"] == "done"
    assert main(["loop", "status", str(spec_file)]) == 0
    assert "round 2 is unfinished" in capsys.readouterr().out


def test_round_data_goes_through_data_sources_when_the_config_has_them(tmp_path, monkeypatch):
    import honed.data.config as data_config
    from honed.pipeline import loop_adapters

    class WithSources:  # stands in for the DataConfig with `sources` (data helper)
        model_fields = {**data_config.DataConfig.model_fields, "sources": None}  # noqa: RUF012

    monkeypatch.setattr(data_config, "DataConfig", WithSources)
    spec = _spec(tmp_path)
    files = [
        {"path": "/r/feedback.jsonl", "kind": "feedback"},
        {"path": "/r/new.csv", "kind": "data"},
    ]
    data = loop_adapters.data_with_sources(spec, files, tmp_path)
    assert "source" not in data
    assert data["sources"] == [
        {"path": spec.data_source(), "kind": "data"},
        {"path": "/r/feedback.jsonl", "format": "jsonl", "kind": "feedback"},
        {"path": "/r/new.csv", "format": "csv", "kind": "data"},
    ]
