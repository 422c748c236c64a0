"""The loop's real steps on a tiny model: a champion, new data in the inbox, one round by hand
(no server: the canary is skipped and the gate decides); a crash right after training resumes
without training or registering again."""

from __future__ import annotations

import json

import pytest
import yaml
from tests.helpers import classification_spec_dict

from honed.cli import main
from honed.pipeline import loop_steps, triggers
from honed.pipeline.loop import LoopHome, now
from honed.pipeline.run import train_and_evaluate
from honed.registry.store import Registry
from honed.spec import load_spec


@pytest.fixture
def loop_spec(tmp_path, tiny_bert, phrasebank_file):
    doc = classification_spec_dict(tiny_bert, phrasebank_file, tmp_path / "champion")
    doc["training"]["epochs"] = 1
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    doc["loop"] = {"inbox": str(inbox), "request_log_url": f"sqlite:///{tmp_path / 'req.db'}"}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(doc))
    spec = load_spec(path)
    result = train_and_evaluate(spec)
    Registry(spec.registry).promote(spec.registered_name(), result.version)
    rows = [{"text": f"sales fell sharply again {i}", "label": "negative"} for i in range(12)]
    (inbox / "new.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Crash(Exception):
    pass


def _registry_state(spec):
    registry = Registry(spec.registry)
    name = spec.registered_name()
    versions = sorted(int(v.version) for v in registry.versions(name))
    champion = str(registry.get_version(f"{name}@champion").version)
    return versions, champion


def test_one_round_by_hand_trains_gates_and_decides(loop_spec, capsys) -> None:
    spec = load_spec(loop_spec)
    # the drift trigger reads the champion's profile; an empty request log is no alert
    assert triggers.measure(spec, [], now()).drift == "insufficient_data"
    assert main(["loop", "run", str(loop_spec), "--once"]) == 0
    out = capsys.readouterr().out
    spec = load_spec(loop_spec)
    state = LoopHome.for_spec(spec).rounds()[0]
    steps = state["steps"]
    assert [steps[s]["outcome"] for s in ("collect", "train")] == ["collected", "trained"]
    assert steps["canary"]["outcome"] == "skipped"
    versions, champion = _registry_state(spec)
    assert versions == [1, 2]
    # the champion moved if and only if the gate passed
    assert (champion == "2") == (steps["gate"]["outcome"] == "passed")
    assert state["outcome"] == ("promoted" if champion == "2" else "rejected")
    assert f"decision, round 1: {state['outcome'].upper()}" in out
    assert (LoopHome.for_spec(spec).report_path).is_file()


def test_a_crash_after_training_never_trains_or_registers_again(loop_spec, monkeypatch) -> None:
    import honed.pipeline.run as run_module

    calls = []
    real = run_module.train_and_evaluate

    def train_then_crash(*args, **kw):
        calls.append(kw.get("resume"))
        real(*args, **kw)
        raise Crash("killed after training, before the step was recorded")

    monkeypatch.setattr(run_module, "train_and_evaluate", train_then_crash)
    with pytest.raises(Crash):
        main(["--debug", "loop", "run", str(loop_spec), "--once"])
    spec = load_spec(loop_spec)
    assert _registry_state(spec) == ([1, 2], "1")  # trained + registered, champion untouched

    monkeypatch.setattr(run_module, "train_and_evaluate", lambda *a, **k: calls.append("again"))
    assert main(["loop", "run", str(loop_spec), "--resume"]) == 0
    assert calls == [False]  # the second run found the registered version
    state = LoopHome.for_spec(spec).rounds()[0]
    assert state["ended"] and state["steps"]["train"]["data"]["resumed"] == "registered"
    assert _registry_state(spec)[0] == [1, 2]
    assert loop_steps.STEPS  # the real steps ran
