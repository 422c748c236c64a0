"""data.sources: several files, provenance per row, feedback corrections overriding labels,
and the per-source accounting in the data report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tests.tiny_cases.sft import build_spec

from honed.data.config import DataConfig
from honed.data.dataset import load_classification
from honed.data.sources import resolve_sources, summary_lines
from honed.errors import DataError, SpecError
from honed.pipeline.check import check_data
from honed.registry.lineage import portable_spec
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
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _feedback(path: Path, corrections: list[tuple[str, str]]) -> Path:
    """The shape `honed monitor feedback-export` writes for a classifier: text, label and
    where the correction came from."""
    rows = [
        {"text": text, "label": label, "request_id": f"r{i}", "feedback_id": i, "model": "m"}
        for i, (text, label) in enumerate(corrections, start=1)
    ]
    return _jsonl(path, rows)


def _cfg(sources: list[dict], **extra) -> DataConfig:
    return DataConfig(sources=sources, labels=LABELS, split=SPLIT, **extra)


def _load(tmp_path: Path, cfg: DataConfig, **kw):
    return load_classification(cfg, sources=resolve_sources(cfg, tmp_path), **kw)


def _by_name(report: dict) -> dict[str, dict]:
    return {s["name"]: s for s in report["sources"]}


def _all(data) -> list[dict]:
    return data.train + data.validation + data.test


def _check_accounting(report: dict) -> None:
    for s in report["sources"]:
        assert s["rows_given"] == s["rows_kept"] + s["rows_lost"], s
        assert s["rows_lost"] == sum(s["lost_by_reason"].values()), s


def test_source_and_sources_together_is_an_error_naming_both(tmp_path):
    spec = {
        "name": "x",
        "model": {"base": "m"},
        "data": {"source": "a.jsonl", "sources": [{"path": "b.jsonl"}]},
    }
    with pytest.raises(SpecError, match=r"data\.source and data\.sources"):
        parse_spec(spec)
    spec["data"] = {}
    with pytest.raises(SpecError, match=r"data\.source or data\.sources"):
        parse_spec(spec)


def test_feedback_overrides_a_training_label_and_the_report_says_so(tmp_path):
    data_rows = _rows(10)
    _jsonl(tmp_path / "data.jsonl", data_rows)
    # A new file with its own field names, mapped per source.
    new = pd.DataFrame([{"sentence": r["text"], "y": r["label"]} for r in _rows(3, "new ")])
    new.to_csv(tmp_path / "new.csv", index=False)
    corrected = data_rows[4]  # "neutral sentence number 1"
    wrong = "positive" if corrected["label"] != "positive" else "negative"
    # Case and spacing differ: the override matches on the normalised text.
    fb = [(f"  {corrected['text'].upper()} ", wrong), ("a text never seen before", "negative")]
    _feedback(tmp_path / "fb.jsonl", fb)
    cfg = _cfg([
        {"path": "data.jsonl"},
        {"path": "new.csv", "text_field": "sentence", "label_field": "y", "name": "extra"},
        {"path": "fb.jsonl", "kind": "feedback"},
    ])  # fmt: skip
    data = _load(tmp_path, cfg)
    rows = _all(data)
    labels_of = {r["text"].strip().lower(): r["label"] for r in rows}
    assert labels_of[corrected["text"]] == wrong
    assert labels_of["a text never seen before"] == "negative"
    assert sum(r["text"].lower().strip() == corrected["text"] for r in rows) == 1
    assert {r["origin"] for r in rows} == {"data.jsonl", "extra", "fb.jsonl"}

    report = data.report
    by = _by_name(report)
    assert by["data.jsonl"]["rows_given"] == 30
    assert by["data.jsonl"]["lost_by_reason"]["overridden"] == 1
    assert by["extra"]["rows_given"] == 9 and by["extra"]["kind"] == "data"
    assert by["fb.jsonl"]["rows_overrode"] == 1 and by["fb.jsonl"]["rows_kept"] == 2
    assert sum(report["rows"].values()) == 30 + 9 + 1
    _check_accounting(report)
    (override,) = report["overrides"]
    assert override["label"] == wrong and override["previous_labels"] == [corrected["label"]]
    assert override["source"] == "fb.jsonl:1" and override["replaced"] == ["data.jsonl:5"]
    assert override["split"] in {"train", "validation", "test"}
    shown = "\n".join(summary_lines(report))
    assert "fb.jsonl (feedback): given 2, kept 2, overrode 1, lost 0" in shown
    assert "label overridden by feedback 1" in shown


def test_later_feedback_wins_and_feedback_wins_whatever_the_order(tmp_path):
    _jsonl(tmp_path / "data.jsonl", _rows(10))
    text = "negative sentence number 2"
    _feedback(tmp_path / "old.jsonl", [(text, "neutral")])
    _feedback(tmp_path / "new.jsonl", [(text, "positive")])
    cfg = _cfg([
        {"path": "old.jsonl", "kind": "feedback"},
        {"path": "data.jsonl"},
        {"path": "new.jsonl", "kind": "feedback"},
    ])  # fmt: skip
    data = _load(tmp_path, cfg)
    assert [r["label"] for r in _all(data) if r["text"] == text] == ["positive"]
    by = _by_name(data.report)
    assert by["old.jsonl"]["rows_overrode"] == 1  # over the data row
    assert by["old.jsonl"]["lost_by_reason"] == {"overridden": 1}  # by the later correction
    assert by["new.jsonl"]["rows_overrode"] == 1 and by["new.jsonl"]["rows_kept"] == 1
    _check_accounting(data.report)


def test_feedback_agreeing_with_the_data_changes_nothing(tmp_path):
    rows = _rows(10)
    _jsonl(tmp_path / "data.jsonl", rows)
    _feedback(tmp_path / "fb.jsonl", [(rows[0]["text"], rows[0]["label"])])
    data = _load(tmp_path, _cfg([{"path": "data.jsonl"}, {"path": "fb.jsonl", "kind": "feedback"}]))
    by = _by_name(data.report)
    assert by["fb.jsonl"]["lost_by_reason"] == {"duplicate": 1}
    assert by["data.jsonl"]["rows_kept"] == 30 and not data.report["overrides"]


def test_conflicts_between_data_sources_are_reported_not_overridden(tmp_path):
    rows = _rows(10)
    _jsonl(tmp_path / "a.jsonl", rows)
    flipped = [{"text": r["text"], "label": "neutral"} for r in rows[:4]]
    _jsonl(tmp_path / "b.jsonl", flipped + _rows(2, "b "))
    data = _load(tmp_path, _cfg([{"path": "a.jsonl"}, {"path": "b.jsonl"}]))
    report = data.report
    labels_of = {r["text"]: r["label"] for r in _all(data)}
    assert all(labels_of[r["text"]] == r["label"] for r in rows[:4])  # first kept
    assert report["duplicate_label_conflicts"] == 3  # one of the four was neutral already
    assert _by_name(report)["b.jsonl"]["lost_by_reason"] == {"label_conflict": 3, "duplicate": 1}
    _check_accounting(report)


def test_bad_feedback_label_names_the_source_and_line(tmp_path):
    _jsonl(tmp_path / "data.jsonl", _rows(10))
    _feedback(tmp_path / "fb.jsonl", [("fine text", "negative"), ("other text", "banana")])
    sources = [{"path": "data.jsonl"}, {"path": "fb.jsonl", "kind": "feedback"}]
    with pytest.raises(DataError, match=r"\[fb\.jsonl\] .*fb\.jsonl:2: unknown label 'banana'"):
        _load(tmp_path, _cfg(sources))
    # Labels not declared: a correction still needs a label the data sources have.
    undeclared = DataConfig(sources=sources, split=SPLIT, on_bad_rows="skip")
    data = _load(tmp_path, undeclared)
    assert data.labels == LABELS
    (bad,) = data.report["bad_rows"]
    assert bad.startswith("[fb.jsonl] ") and "fb.jsonl:2: unknown label 'banana'" in bad
    assert _by_name(data.report)["fb.jsonl"]["lost_by_reason"] == {"bad_row": 1}
    _check_accounting(data.report)


def test_one_source_reports_as_before(tmp_path):
    rows = _rows(10)
    _jsonl(tmp_path / "d.jsonl", rows + rows[:2])
    cfg = DataConfig(source="d.jsonl", labels=LABELS, split=SPLIT)
    data = _load(tmp_path, cfg)
    single = load_classification(cfg, str(tmp_path / "d.jsonl"))
    assert data.content_sha256 == single.content_sha256
    assert data.report["duplicates_removed"] == 2
    assert data.report["source_sha256"] == data.source_sha256
    (only,) = data.report["sources"]
    assert only["rows_given"] == 32 and only["lost_by_reason"] == {"duplicate": 2}


def _spec(tmp_path: Path, data: dict) -> Path:
    spec = {"name": "multi", "model": {"base": "m"}, "data": data}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_validate_checks_every_source_with_its_own_fields(tmp_path):
    from honed.spec import load_spec

    _jsonl(tmp_path / "data.jsonl", _rows(3))
    _jsonl(tmp_path / "fb.jsonl", [{"sentence": "x", "label": "neutral"}])
    data = {"sources": [{"path": "data.jsonl"}, {"path": "fb.jsonl", "kind": "feedback"}]}
    with pytest.raises(DataError, match=r"data\.sources\[1\]\.text_field: field 'text'"):
        check_data(load_spec(_spec(tmp_path, data)))
    data["sources"][1]["text_field"] = "sentence"
    checked = check_data(load_spec(_spec(tmp_path, data)))
    assert checked.rows_sampled == 10 and "2 sources" in checked.source
    data["sources"].append({"path": "missing.jsonl"})
    with pytest.raises(DataError, match=r"data\.sources\[2\]: .*missing\.jsonl"):
        check_data(load_spec(_spec(tmp_path, data)))


def test_run_folder_spec_keeps_sources_portable(tmp_path):
    from honed.spec import load_spec

    _jsonl(tmp_path / "data.jsonl", _rows(3))
    data = {"sources": [{"path": "data.jsonl"}, {"path": "fb.jsonl", "kind": "feedback"}]}
    spec = load_spec(_spec(tmp_path, data))
    run = tmp_path / "runs" / "multi"
    run.mkdir(parents=True)
    dump = portable_spec(spec, run)
    assert dump["data"]["source"] is None
    assert dump["data"]["sources"][0]["path"] == "../../data.jsonl"
    parse_spec(dump)  # spec.yaml of the run folder parses again


def test_text_tasks_take_sources_of_kind_data_and_refuse_feedback(tmp_path):
    spec = build_spec(tmp_path, "lora")
    first = Path(spec.data_source())
    rows = json.loads(first.read_text())
    more = tmp_path / "more.jsonl"
    _jsonl(more, [{**r, "instruction": "more " + r["instruction"]} for r in rows[:4]])
    data_section = spec.data.model_dump()
    data_section.update(source=None, sources=[{"path": str(first)}, {"path": str(more)}])
    multi = spec.with_overrides(data=data_section)
    data = get_task("sft").prepare_data(multi)
    by = _by_name(data.report)
    assert by[more.name]["rows_given"] == 4 and by[first.name]["rows_given"] == len(rows)
    assert sum(data.report["rows"].values()) == len(rows) + 4
    _check_accounting(data.report)
    data_section["sources"][1]["kind"] = "feedback"
    with pytest.raises(SpecError, match=r"data\.sources\[1\]\.kind: 'feedback'.*kind: data"):
        get_task("sft").prepare_data(spec.with_overrides(data=data_section))
