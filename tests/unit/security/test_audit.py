"""The hash-chained audit log: tamper evidence, concurrent appends, the CLI, the hooks."""

from __future__ import annotations

import itertools
import json
import multiprocessing
from pathlib import Path

import pytest

from honed.cli import main
from honed.security.audit import AuditError, AuditLog, audit_log, row_hash


def _filled(tmp_path: Path, n: int = 5) -> AuditLog:
    log = audit_log(tmp_path)
    for i in range(n):
        log.append("adapter.loaded", "key:ops", name=f"a{i}", sha256="ab" * 32)
    return log


def _lines(log: AuditLog) -> list[str]:
    return log.path.read_text().splitlines()


def _write(log: AuditLog, lines: list[str]) -> None:
    log.path.write_text("".join(line + "\n" for line in lines))


def test_rows_chain_and_verify(tmp_path):
    log = _filled(tmp_path)
    rows = list(log.rows())
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["prev"] == "0" * 64
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(rows))
    assert all(r["hash"] == row_hash(r) for r in rows)
    result = log.verify()
    assert result.ok and result.rows == 5 and result.head == rows[-1]["hash"]


def test_edited_row_is_named(tmp_path):
    log = _filled(tmp_path)
    lines = _lines(log)
    row = json.loads(lines[2])
    row["name"] = "evil"
    lines[2] = json.dumps(row)
    _write(log, lines)
    result = log.verify()
    assert not result.ok and result.seq == 3 and result.line == 3
    assert "edited" in result.problem


def test_rewritten_row_with_recomputed_hash_breaks_the_next_link(tmp_path):
    log = _filled(tmp_path)
    lines = _lines(log)
    row = json.loads(lines[1])
    row["name"] = "evil"
    row["hash"] = row_hash(row)
    lines[1] = json.dumps(row)
    _write(log, lines)
    result = log.verify()
    assert not result.ok and result.seq == 3 and "prev" in result.problem


def test_deleted_reordered_and_truncated_rows(tmp_path):
    log = _filled(tmp_path)
    lines = _lines(log)
    _write(log, lines[:2] + lines[3:])
    deleted = log.verify()
    assert not deleted.ok and deleted.seq == 4 and "expected seq 3" in deleted.problem
    _write(log, [lines[0], lines[2], lines[1], *lines[3:]])
    assert log.verify().seq == 3
    _write(log, lines[:3])  # the tail cut off: only the head pointer knows
    cut = log.verify()
    assert not cut.ok and "rows 4..5 were removed" in cut.problem
    with pytest.raises(AuditError, match="head pointer"):
        log.append("apikey.created", "me")  # never extends a truncated chain


def test_torn_line_and_reserved_fields(tmp_path):
    log = _filled(tmp_path, 2)
    with log.path.open("a") as fh:
        fh.write('{"seq": 3, "ev')
    result = log.verify()
    assert not result.ok and result.line == 3 and "not a JSON row" in result.problem
    with pytest.raises(ValueError, match="clash"):
        log.append("x", "me", hash="forged")


def _append_many(home: str, who: str, n: int) -> None:
    log = audit_log(Path(home))
    for i in range(n):
        log.append("adapter.loaded", who, name=f"{who}-{i}")


def test_concurrent_appends_from_two_processes_keep_the_chain(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w, 40)) for w in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    log = audit_log(tmp_path)
    result = log.verify()
    assert result.ok and result.rows == 80, result
    assert {r["actor"] for r in log.rows()} == {"a", "b"}


def test_cli_verify_and_show(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HONED_HOME", str(tmp_path))
    log = _filled(tmp_path, 3)
    assert main(["audit", "verify", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["rows"] == 3
    assert main(["audit", "show", "--tail", "2"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 2 and "a2" in shown[-1]
    lines = _lines(log)
    lines[0] = lines[0].replace('"a0"', '"zz"')
    _write(log, lines)
    assert main(["audit", "verify"]) == 1
    assert "row seq 1 (line 1)" in capsys.readouterr().err


def test_apikey_creation_is_audited(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HONED_HOME", str(tmp_path))
    keys = tmp_path / "keys.yaml"
    assert main(["apikey", "create", "ci", "--file", str(keys)]) == 0
    rows = list(audit_log().rows())
    assert [(r["event"], r["name"]) for r in rows] == [("apikey.created", "ci")]
    assert "@" in rows[0]["actor"] and audit_log().verify().ok
    assert "hk-" not in audit_log().path.read_text()  # never the key itself


def test_registry_moves_are_audited(monkeypatch, tmp_path):
    from honed.registry.history import append_entry, make_entry

    monkeypatch.setenv("HONED_HOME", str(tmp_path))
    append_entry(make_entry("m", "champion", None, "1", "promote", actor="loop"))
    append_entry(make_entry("m", "champion", "1", "2", "forced_promote", actor="me@h"))
    append_entry(make_entry("m", "champion", "2", "1", "rollback", actor="me@h"))
    rows = list(audit_log().rows())
    assert [r["event"] for r in rows] == [
        "model.promoted",
        "model.force_promoted",
        "model.rolled_back",
    ]
    assert rows[1]["to_version"] == "2" and rows[0]["actor"] == "loop"
