"""`honed loop step`: one step of a round (a Kubeflow pipeline task) through the embedded loop's
own steps and records: ordering, idempotency, rounds that end early, and the same round record
as `honed loop run --once`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.unit.pipeline.test_loop import _fake_steps, _spec
from tests.unit.pipeline.test_loop_tiny import _registry_state
from tests.unit.pipeline.test_loop_tiny import loop_spec as tiny_loop_spec  # noqa: F401

from honed.cli import main
from honed.pipeline import loop_steps, triggers
from honed.pipeline.loop import STEPS, LoopHome, LoopRunner, lock_for
from honed.spec import load_spec

CLOCK = {"started", "ended", "until"}  # when a step ran or cut its data: differs per run


def _spec_file(tmp_path: Path, **loop) -> tuple[object, Path]:
    spec = _spec(tmp_path, **loop)
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec.model_dump(mode="json")))
    return spec, path


def _step(step: str, spec_file: Path, *extra: str) -> int:
    return main(["loop", "step", step, str(spec_file), *extra])


def _without_times(doc):
    """A round's record less its clock readings (the only thing two runs may differ in)."""
    if isinstance(doc, dict):
        return {k: "<clock>" if k in CLOCK else _without_times(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_without_times(v) for v in doc]
    return doc


def _fake(monkeypatch, calls: dict, **outcomes) -> None:
    for name, step in _fake_steps(calls, outcomes=outcomes).items():
        monkeypatch.setitem(loop_steps.STEPS, name, step)


def _run_once_elsewhere(spec, monkeypatch, tmp_path) -> dict:
    """`LoopRunner.run_once` with the same steps, in a fresh HONED_HOME."""
    monkeypatch.setenv("HONED_HOME", str(tmp_path / "embedded-home"))
    home = LoopHome.for_spec(spec)
    runner = LoopRunner(spec, loop_steps.STEPS, home, say=lambda _m: None)
    return runner.run_once(triggers.manual("honed loop step"))


@pytest.mark.parametrize("steps", ["fake", "real"])
def test_steps_one_by_one_record_what_run_once_records(
    tmp_path, monkeypatch, capsys, steps
) -> None:
    spec, spec_file = _spec_file(tmp_path)
    if steps == "fake":  # every step succeeds, decide promotes
        _fake(monkeypatch, {}, decide="promoted")
    # real: nothing to collect, so every later step is the real one recording its skip
    for name in STEPS:
        assert _step(name, spec_file, "--round", "1") == 0
    by_steps = LoopHome.for_spec(spec).rounds()
    assert len(by_steps) == 1 and by_steps[0]["ended"]
    embedded = _run_once_elsewhere(spec, monkeypatch, tmp_path)
    assert _without_times(by_steps[0]) == _without_times(embedded)
    expected = "promoted" if steps == "fake" else "skipped"
    assert embedded["outcome"] == expected
    out = capsys.readouterr().out
    assert "report: " in out  # decide closes the round and writes the report, as the loop does


def test_a_round_that_ends_early_lets_the_later_steps_succeed(tmp_path, capsys) -> None:
    spec, spec_file = _spec_file(tmp_path)
    out_dir = tmp_path / "outputs"
    assert _step("collect", spec_file, "--round", "next", "--round-output", str(out_dir / "n")) == 0
    assert (out_dir / "n").read_text() == "1"
    for name in STEPS[1:]:
        out = out_dir / f"{name}.json"
        assert _step(name, spec_file, "--round", "1", "--output", str(out)) == 0
        printed = capsys.readouterr().out
        doc = json.loads(out.read_text())
        assert doc["round_ended_at"] == "collect" and doc["ran"] and doc["status"] == "done"
        if name != "decide":
            assert "skipped: round ended at collect (nothing_new)" in printed
    assert doc["outcome"] == "skipped" and doc["round_outcome"] == "skipped"
    steps = LoopHome.for_spec(spec).rounds()[0]["steps"]
    assert {s: r["outcome"] for s, r in steps.items()} == {
        "collect": "nothing_new",
        "train": "skipped",
        "gate": "failed",
        "canary": "skipped",
        "decide": "skipped",
    }


def test_a_step_before_its_predecessors_is_refused(tmp_path, monkeypatch, capsys) -> None:
    calls: dict = {}
    _fake(monkeypatch, calls)
    spec, spec_file = _spec_file(tmp_path)
    assert _step("train", spec_file, "--round", "1") == 2
    assert "round 1 has not started: its first step is collect" in capsys.readouterr().err
    assert _step("collect", spec_file, "--round", "1") == 0
    assert _step("canary", spec_file, "--round", "1") == 2
    err = capsys.readouterr().err
    assert "canary runs after train, gate, which have not finished" in err
    assert "`honed loop step train ... --round 1` first" in err
    assert _step("sweep", spec_file, "--round", "1") == 2
    assert "unknown loop step 'sweep'" in capsys.readouterr().err
    assert calls == {"collect": 1}  # nothing ran out of order
    assert LoopHome.for_spec(spec).rounds()[0]["steps"].keys() == {"collect"}


def test_a_finished_step_is_not_run_again(tmp_path, monkeypatch, capsys) -> None:
    calls: dict = {}
    _fake(monkeypatch, calls)
    _spec, spec_file = _spec_file(tmp_path)
    out = tmp_path / "collect.json"
    assert _step("collect", spec_file, "--round", "1") == 0
    first = capsys.readouterr().out
    assert _step("collect", spec_file, "--round", "1", "--output", str(out)) == 0
    assert "round 1: collect already done: done - collect" in capsys.readouterr().out
    assert "triggered by manual" in first
    assert calls == {"collect": 1}
    doc = json.loads(out.read_text())
    assert doc["ran"] is False and doc["outcome"] == "done" and doc["attempts"] == 1


def test_round_numbers_follow_the_loop(tmp_path, monkeypatch, capsys) -> None:
    _fake(monkeypatch, {})
    spec, spec_file = _spec_file(tmp_path)
    assert _step("collect", spec_file, "--round", "3") == 2
    assert "round 3: the next round of this loop is 1" in capsys.readouterr().err
    trigger = json.dumps({"kind": "pipeline", "reason": "kfp run abc"})
    assert _step("collect", spec_file, "--round", "next", "--trigger", trigger) == 0
    assert _step("collect", spec_file, "--round", "2") == 2  # round 1 is unfinished
    assert "round 1 is unfinished: finish it first" in capsys.readouterr().err
    n = tmp_path / "n"
    assert _step("collect", spec_file, "--round", "next", "--round-output", str(n)) == 0
    assert (
        n.read_text() == "1" and "round 1 is unfinished: continuing it" in capsys.readouterr().out
    )
    for name in STEPS[1:]:
        assert _step(name, spec_file, "--round", "1") == 0
    assert _step("collect", spec_file, "--round", "next", "--round-output", str(n)) == 0
    assert n.read_text() == "2"
    rounds = LoopHome.for_spec(spec).rounds()
    assert rounds[0]["trigger"]["reason"] == "kfp run abc" and rounds[0]["ended"]
    assert rounds[1]["trigger"]["kind"] == "manual" and not rounds[1]["ended"]


def test_a_step_waits_for_no_one_while_a_loop_holds_the_lock(tmp_path, capsys) -> None:
    spec, spec_file = _spec_file(tmp_path)
    with lock_for(spec):
        assert _step("collect", spec_file, "--round", "1") == 2
    assert "another loop is running for this model" in capsys.readouterr().err
    assert LoopHome.for_spec(spec).rounds() == []


def test_a_trigger_that_is_not_a_json_object_is_refused(tmp_path, capsys) -> None:
    _spec, spec_file = _spec_file(tmp_path)
    with pytest.raises(SystemExit):
        _step("collect", spec_file, "--round", "1", "--trigger", "[1]")
    assert "a JSON object" in capsys.readouterr().err


def test_the_real_steps_one_by_one_on_a_tiny_model(request, capsys) -> None:
    """The round of test_loop_tiny's first test, as a pipeline runs it: five processes'
    worth of `honed loop step`, each picking up the state the previous one left."""
    spec_file = request.getfixturevalue("tiny_loop_spec")  # a champion + new inbox rows
    n = spec_file.parent / "round"
    assert _step("collect", spec_file, "--round", "next", "--round-output", str(n)) == 0
    number = n.read_text()
    for name in STEPS[1:]:
        out = spec_file.parent / f"{name}.json"
        assert _step(name, spec_file, "--round", number, "--output", str(out)) == 0
    spec = load_spec(spec_file)
    state = LoopHome.for_spec(spec).rounds()[0]
    steps = state["steps"]
    assert [steps[s]["outcome"] for s in ("collect", "train")] == ["collected", "trained"]
    assert steps["canary"]["outcome"] == "skipped" and state["ended"]
    assert all(r["attempts"] == 1 for r in steps.values())
    versions, champion = _registry_state(spec)
    assert versions == [1, 2]
    assert (champion == "2") == (steps["gate"]["outcome"] == "passed")
    assert state["outcome"] == ("promoted" if champion == "2" else "rejected")
    decide = json.loads((spec_file.parent / "decide.json").read_text())
    assert decide["round_outcome"] == state["outcome"] and decide["ran"]
    # a retried task (kfp "retry") finds its step done and changes nothing
    assert _step("train", spec_file, "--round", number) == 0
    assert "train already done: trained" in capsys.readouterr().out
    assert _registry_state(spec)[0] == [1, 2]
