"""Alias history: every move recorded (file + MLflow tags); promote gates, --force, rollback."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from honed.cli import main
from honed.errors import RegistryError
from honed.registry.history import (
    append_entry,
    history_path,
    make_entry,
    read_history,
    served,
)
from honed.registry.store import Registry

NAME = "tiny-gated"


def _register(registry: Registry, folder, accuracy: float) -> str:
    run_id, uri = registry.log_run(NAME, NAME, folder, {}, {"test_accuracy": accuracy}, {})
    return registry.register(NAME, uri, run_id, {}, "challenger")


@pytest.fixture
def registry(gate_models) -> Registry:
    """v1 = the champion, v2 = a broken copy, v3 = an identical copy."""
    registry = Registry()
    for key, accuracy in (("champion", 0.9), ("broken", 0.3), ("same", 0.9)):
        _register(registry, gate_models[key], accuracy)
    return registry


def _actions(name: str = NAME) -> list[tuple]:
    return [
        (e["action"], e["alias"], e["from_version"], e["to_version"]) for e in read_history(name)
    ]


def test_moves_are_recorded_in_the_file_and_as_version_tags(registry):
    assert registry.promote(NAME, "1", reason="first", actor="loop") == ("1", None)
    registry.promote(NAME, "2", evidence={"passed": False}, forced=True, reason="hotfix")
    registry.promote(NAME, "3")
    assert registry.rollback(NAME, reason="bad canary") == ("2", "3")
    assert registry.rollback(NAME) == ("1", "2")  # skips what was already rolled back
    assert _actions()[3:] == [
        ("promote", "champion", None, "1"),
        ("forced_promote", "champion", "1", "2"),
        ("promote", "champion", "2", "3"),
        ("rollback", "champion", "3", "2"),
        ("rollback", "champion", "2", "1"),
    ]
    assert _actions()[:3] == [("register", "challenger", None, "1")] + [
        ("register", "challenger", str(v - 1), str(v)) for v in (2, 3)
    ]
    entries = read_history(NAME)
    first, forced = entries[3], entries[4]
    assert first["actor"] == "loop" and first["reason"] == "first"
    assert first["metrics"] == {"test_accuracy": 0.9}
    assert forced["evidence"] == {"passed": False} and "@" in forced["actor"]
    assert all(e["time"].endswith("+00:00") for e in entries)
    assert [s["version"] for s in served(entries)] == ["1", "2", "3", "2", "1"]
    assert served(entries)[-1]["until"] is None
    # The same record in MLflow, on the versions the alias moved to.
    tagged = [
        json.loads(value)
        for v in registry.versions(NAME)
        for key, value in v.tags.items()
        if key.startswith("history.")
    ]
    assert sorted(e["time"] for e in tagged) == [e["time"] for e in entries]
    history_path(NAME).unlink()
    assert _actions() == []  # no registry given: the file only
    assert [e["action"] for e in read_history(NAME, registry)] == [e["action"] for e in entries]


def test_rollback_without_an_earlier_holder_is_a_clear_error(registry):
    registry.promote(NAME, "1")
    with pytest.raises(RegistryError, match="no earlier holder"):
        registry.rollback(NAME)


def test_concurrent_writers_never_interleave_lines(tmp_path):
    def write(worker: int) -> None:
        for i in range(40):
            entry = make_entry("many", "champion", None, str(i), "promote", reason="x" * 3000)
            append_entry(entry | {"worker": worker})

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = history_path("many").read_text().splitlines()
    assert len(lines) == 160 and all(json.loads(line)["reason"] for line in lines)


def test_cli_promote_runs_the_gate_force_rollback_and_history(registry, capsys):
    assert main(["models", "promote", NAME, "1", "--reason", "first model"]) == 0
    out = capsys.readouterr().out
    assert "gate PASSED" in out and f"{NAME}@champion -> v1" in out

    assert main(["models", "promote", NAME, "2"]) == 3  # the broken one
    captured = capsys.readouterr()
    assert "gate FAILED" in captured.out and "FAIL  accuracy not worse" in captured.out
    assert "McNemar p=" in captured.out and "golden examples" in captured.out
    assert "refused" in captured.err and "--force" in captured.err
    assert Registry().alias_holder(NAME, "champion") == "1"

    assert main(["models", "promote", NAME, "2", "--force", "--reason", "override"]) == 0
    assert "forced" in capsys.readouterr().out
    forced = read_history(NAME)[-1]
    assert forced["action"] == "forced_promote" and forced["reason"] == "override"
    assert (
        forced["evidence"]["passed"] is False and "golden examples" in forced["evidence"]["failed"]
    )
    gate_file = json.loads(Path(forced["evidence"]["path"]).read_text())
    assert gate_file["passed"] is False and gate_file["champion"] == f"{NAME}/1"

    assert main(["models", "rollback", NAME, "--reason", "forced one misbehaved"]) == 0
    assert f"{NAME}@champion -> v1 (rolled back from v2)" in capsys.readouterr().out

    assert main(["models", "promote", NAME, "3"]) == 0  # identical to v1: not worse
    assert "gate PASSED" in capsys.readouterr().out

    assert main(["models", "history", NAME]) == 0
    text = capsys.readouterr().out
    for word in ("forced_promote", "rollback", "forced one misbehaved", "which version served"):
        assert word in text
    assert main(["models", "history", NAME, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [s["version"] for s in shown["served"]["champion"]] == ["1", "2", "1", "3"]
    assert [m["action"] for m in shown["moves"]][-4:] == [
        "promote",
        "forced_promote",
        "rollback",
        "promote",
    ]
    assert main(["models", "history", "no-such-model"]) == 2
    assert "no-such-model: no registered versions" in capsys.readouterr().err
