"""The frozen evaluation set: written by every run, reused unchanged as the test split of later
runs of the same model, kept out of their training data; the golden file carried along."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from honed.data.config import DataConfig
from honed.data.dataset import load_classification
from honed.data.frozen import (
    copy_eval_set,
    meta_path,
    read_eval_set,
    text_hash,
    write_eval_set,
)
from honed.data.sources import resolve_sources
from honed.errors import DataError, SpecError
from honed.paths import RunPaths
from honed.pipeline import evalsets
from honed.spec import parse_spec
from honed.train.tasks import get_task

LABELS = ["negative", "neutral", "positive"]
SPLIT = {"test_size": 0.2, "validation_size": 0.2, "seed": 3}


def _rows(n: int, prefix: str = "") -> list[dict]:
    return [
        {"text": f"{prefix}{label} sentence number {i}", "label": label}
        for i in range(n)
        for label in LABELS
    ]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _load(tmp_path: Path, cfg: DataConfig, **kw):
    return load_classification(cfg, sources=resolve_sources(cfg, tmp_path), **kw)


def test_write_read_copy_keep_the_bytes_and_name_the_origin(tmp_path):
    rows = [{"text": "a b", "label": "x", "line": 3, "origin": "d.jsonl"}]
    first = tmp_path / "one" / "frozen_test.jsonl"
    meta = write_eval_set(rows, first, {"kind": "split", "run": "r1"})
    assert json.loads(first.read_text()) == {"text": "a b", "label": "x"}  # no provenance
    assert meta["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    found = read_eval_set(first, "eval.frozen_set")
    assert found.sha256 == meta["sha256"] and found.origin == {"kind": "split", "run": "r1"}
    second = tmp_path / "two" / "frozen_test.jsonl"
    copy_eval_set(found, second, {"kind": "reused", "ref": "m/1"})
    assert second.read_bytes() == first.read_bytes()
    again = json.loads(meta_path(second).read_text())
    assert again["sha256"] == meta["sha256"]
    assert again["origin"]["first"] == {"kind": "split", "run": "r1"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json\n", "frozen.jsonl:1: broken JSON"),
        ('{"text": "a"}\n', "frozen.jsonl:1: needs a non-empty string field 'label'"),
        ("\n", "holds no rows"),
        ('{"text": "a", "label": "banana"}\n', r"label\(s\) \['banana'\] are not among"),
    ],
)
def test_bad_frozen_files_are_clear_errors(tmp_path, body, message):
    path = tmp_path / "frozen.jsonl"
    path.write_text(body)
    with pytest.raises(DataError, match=message):
        read_eval_set(path, "eval.frozen_set", LABELS)
    with pytest.raises(DataError, match=r"eval\.frozen_set: .*file not found"):
        read_eval_set(tmp_path / "none.jsonl", "eval.frozen_set")


def test_frozen_set_is_the_test_split_and_never_trained_on(tmp_path):
    old = _rows(10)
    frozen_rows = old[:9]
    frozen = read_eval_set(_jsonl(tmp_path / "frozen.jsonl", frozen_rows), "eval.frozen_set")
    # The new data holds the frozen texts again (one with other case and spacing) and more.
    again = [dict(r) for r in old]
    again[0]["text"] = "  " + again[0]["text"].upper()
    _jsonl(tmp_path / "data.jsonl", again + _rows(5, "new "))
    cfg = DataConfig(source="data.jsonl", labels=LABELS, split=SPLIT)
    data = _load(tmp_path, cfg, frozen=frozen)
    assert [{"text": r["text"], "label": r["label"]} for r in data.test] == frozen_rows
    hashes = {text_hash(r["text"]) for r in frozen_rows}
    assert not hashes & {text_hash(r["text"]) for r in data.train + data.validation}
    assert len(data.train) + len(data.validation) == 30 - 9 + 15
    report = data.report
    assert report["frozen_eval"]["reused"] and report["frozen_eval"]["removed_from_training"] == 9
    assert report["frozen_eval"]["sha256"] == frozen.sha256
    (only,) = report["sources"]
    assert only["lost_by_reason"] == {"leaked_frozen": 9} and only["rows_kept"] == 36
    assert not any(r["text"].startswith("new ") for r in data.test)  # new data never enters


def test_frozen_label_outside_the_declared_labels(tmp_path):
    frozen = read_eval_set(_jsonl(tmp_path / "f.jsonl", [{"text": "t", "label": "odd"}]), "x")
    _jsonl(tmp_path / "data.jsonl", _rows(10))
    cfg = DataConfig(source="data.jsonl", labels=LABELS, split=SPLIT)
    with pytest.raises(DataError, match=r"eval.frozen_set: .*\['odd'\]"):
        _load(tmp_path, cfg, frozen=frozen)


def _spec(tmp_path: Path, task: str = "classification", **eval_cfg):
    _jsonl(tmp_path / "data.jsonl", _rows(10))
    data = {"source": "data.jsonl", "labels": LABELS, "split": SPLIT}
    if task != "classification":
        data = {"source": "data.jsonl", "text_field": "text"}
    spec = parse_spec(
        {
            "name": "fz",
            "task": task,
            "model": {"base": "m"},
            "data": data,
            "eval": eval_cfg,
            "task_options": {"target_field": "label"} if task == "seq2seq" else {},
        },
        path=tmp_path / "spec.yaml",
    )
    return spec


def _champion(tmp_path: Path, rows: list[dict], golden: list[dict] | None = None) -> Path:
    folder = tmp_path / "champion"
    write_eval_set(rows, RunPaths(folder).frozen_eval, {"kind": "split", "run": "fz"})
    if golden:
        write_eval_set(golden, RunPaths(folder).golden, {"kind": "given"})
    return folder


def test_auto_reuses_the_champions_set_and_golden(tmp_path, monkeypatch):
    folder = _champion(tmp_path, _rows(2), golden=[{"text": "must", "label": "neutral"}])
    monkeypatch.setattr(evalsets, "champion_folder", lambda spec: ("fz/1", folder))
    spec = _spec(tmp_path)
    task = get_task("classification")
    sets = evalsets.choose_eval_sets(spec, task)
    assert sets.champion == "fz/1" and sets.frozen.ref == "fz/1 (champion)"
    data = task.prepare_data(spec, frozen=sets.frozen)
    run = RunPaths(tmp_path / "run")
    evalsets.write_eval_sets(spec, run, data, sets)
    assert run.frozen_eval.read_bytes() == RunPaths(folder).frozen_eval.read_bytes()
    assert run.golden.read_bytes() == RunPaths(folder).golden.read_bytes()
    assert json.loads(meta_path(run.golden).read_text())["origin"]["kind"] == "inherited"
    assert data.report["frozen_eval"]["from"] == "fz/1 (champion)"
    # none: split anew; the golden file still comes along.
    fresh = evalsets.choose_eval_sets(_spec(tmp_path, frozen_set="none"), task)
    assert fresh.frozen is None and fresh.golden is not None


def test_no_champion_or_registry_off_splits_and_writes_the_new_test_split(tmp_path, monkeypatch):
    spec = _spec(tmp_path).with_overrides(registry={"enabled": False})
    task = get_task("classification")
    sets = evalsets.choose_eval_sets(spec, task)
    assert sets.frozen is None and sets.golden is None and sets.champion is None
    data = task.prepare_data(spec)
    run = RunPaths(tmp_path / "run")
    evalsets.write_eval_sets(spec, run, data, sets)
    written = [json.loads(x) for x in run.frozen_eval.read_text().splitlines()]
    assert written == [{"text": r["text"], "label": r["label"]} for r in data.test]
    assert json.loads(meta_path(run.frozen_eval).read_text())["origin"]["kind"] == "split"
    assert not run.golden.exists()


def test_explicit_frozen_path_and_golden(tmp_path):
    frozen = _jsonl(tmp_path / "sets" / "frozen.jsonl", _rows(2, "held "))
    golden = _jsonl(tmp_path / "sets" / "golden.jsonl", [{"text": "g", "label": "positive"}])
    spec = _spec(tmp_path, frozen_set="sets/frozen.jsonl", golden="sets/golden.jsonl")
    sets = evalsets.choose_eval_sets(spec, get_task("classification"))
    assert sets.frozen.path == frozen and sets.golden.path == golden
    bad = _jsonl(tmp_path / "sets" / "bad.jsonl", [{"text": "g", "label": "banana"}])
    with pytest.raises(DataError, match=r"eval\.golden: .*banana"):
        evalsets.choose_eval_sets(_spec(tmp_path, golden=str(bad)), get_task("classification"))


def test_other_tasks_refuse_a_frozen_path_and_skip_auto(tmp_path, monkeypatch):
    monkeypatch.setattr(evalsets, "champion_folder", lambda spec: pytest.fail("looked up"))
    task = get_task("seq2seq")
    spec = _spec(tmp_path, "seq2seq", frozen_set="f.jsonl", golden="g.jsonl")
    with pytest.raises(SpecError, match=r"eval\.frozen_set: task 'seq2seq' always splits"):
        evalsets._frozen(spec, False, None)
    _jsonl(tmp_path / "g.jsonl", [{"prompt": "p", "check": "x"}])
    sets = evalsets.choose_eval_sets(_spec(tmp_path, "seq2seq", golden="g.jsonl"), task)
    assert sets.frozen is None and sets.golden is not None  # golden rows: the gate's format
