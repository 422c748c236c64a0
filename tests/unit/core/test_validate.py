"""`honed validate` reads a sample of the spec's data: a missing file, a wrong encoding or a
misspelt field is an error naming the spec setting, the file and the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tests.helpers import write_phrasebank

from honed.cli import main
from honed.errors import DataError
from honed.pipeline.run import train_and_evaluate
from honed.spec import load_spec


def _spec(tmp_path: Path, data: dict, **extra) -> Path:
    spec = {"name": "v", "model": {"base": str(tmp_path / "no-model")}, "data": data, **extra}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(10)]


def _validate(spec: Path, capsys) -> tuple[int, str]:
    code = main(["validate", str(spec)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_ok_spec_reports_the_rows_checked(tmp_path, capsys):
    data = _jsonl(tmp_path / "d.jsonl", ROWS)
    code, out = _validate(_spec(tmp_path, {"source": str(data)}), capsys)
    assert code == 0
    assert "ok" in out and "10 row(s) checked" in out


def test_missing_file_names_setting_and_file(tmp_path, capsys):
    code, out = _validate(_spec(tmp_path, {"source": "nowhere.jsonl"}), capsys)
    assert code == 2
    assert "data.source" in out and str(tmp_path / "nowhere.jsonl") in out
    assert "not found" in out


def test_unreadable_file(tmp_path, capsys):
    folder = tmp_path / "d.jsonl"
    folder.mkdir()
    code, out = _validate(_spec(tmp_path, {"source": str(folder), "format": "jsonl"}), capsys)
    assert code == 2 and "data.source" in out and "not a file" in out


def test_misspelt_field_lists_the_fields_found(tmp_path, capsys):
    data = _jsonl(
        tmp_path / "d.jsonl", [{"sentence": r["text"], "label": r["label"]} for r in ROWS]
    )
    code, out = _validate(_spec(tmp_path, {"source": str(data)}), capsys)
    assert code == 2
    assert "data.text_field" in out and "'text'" in out and str(data) in out
    assert "label, sentence" in out


def test_wrong_encoding_names_file_and_line(tmp_path, capsys):
    data = write_phrasebank(tmp_path / "p.txt", extra=["Café profits rose@positive"])
    spec = {"source": str(data), "format": "phrasebank"}  # the file is iso-8859-1, not utf-8
    code, out = _validate(_spec(tmp_path, spec), capsys)
    assert code == 2
    assert f"{data}:91: undecodable bytes (not valid utf-8)" in out
    spec["encoding"] = "iso-8859-1"
    assert _validate(_spec(tmp_path, spec), capsys)[0] == 0


def test_undeclared_label(tmp_path, capsys):
    data = _jsonl(tmp_path / "d.jsonl", ROWS)
    spec = {"source": str(data), "labels": ["a", "c"]}
    code, out = _validate(_spec(tmp_path, spec), capsys)
    assert code == 2 and "data.labels" in out and "['b']" in out


def test_task_option_field(tmp_path, capsys):
    data = _jsonl(tmp_path / "d.jsonl", [{"text": "long", "abstract": "short"}] * 3)
    code, out = _validate(_spec(tmp_path, {"source": str(data)}, task="seq2seq"), capsys)
    assert code == 2 and "task_options.target_field" in out and "'summary'" in out


def test_sft_rows_of_no_known_chat_format(tmp_path, capsys):
    data = _jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}] * 3)
    code, out = _validate(_spec(tmp_path, {"source": str(data)}, task="sft"), capsys)
    assert code == 2 and "cannot tell the chat format" in out


def test_big_file_is_sampled_not_read_whole(tmp_path, capsys):
    """A broken row past the sample's byte bound is the full read's business, not validate's."""
    rows = [{"text": f"row {i} " + "x" * 100, "label": "ab"[i % 2]} for i in range(20_000)]
    data = _jsonl(tmp_path / "d.jsonl", rows)
    with data.open("a") as handle:
        handle.write("{broken\n")
    code, out = _validate(_spec(tmp_path, {"source": str(data)}), capsys)
    assert code == 0 and "200 row(s) checked" in out


def test_big_json_array_is_sampled(tmp_path, capsys):
    rows = [{"text": f"row {i} " + "x" * 100, "label": "ab"[i % 2]} for i in range(20_000)]
    data = tmp_path / "d.json"
    data.write_text(json.dumps(rows))
    code, out = _validate(_spec(tmp_path, {"source": str(data)}), capsys)
    assert code == 0 and "200 row(s) checked" in out


def test_run_fails_early_with_the_same_error(tmp_path):
    """`honed run` checks the data before resolving the (here missing) base model."""
    spec = load_spec(_spec(tmp_path, {"source": "nowhere.jsonl"}))
    with pytest.raises(DataError, match=r"data\.source: .*nowhere\.jsonl: data file not found"):
        train_and_evaluate(spec, output_dir=tmp_path / "run")


def test_saved_hf_dataset_and_parquet_are_sampled(tmp_path, capsys):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    code, out = _validate(_spec(tmp_path, {"source": "ds", "format": "hf"}), capsys)
    assert code == 0 and "10 row(s) checked" in out
    datasets.Dataset.from_list([{"sentence": "x", "label": "a"}] * 3).to_parquet(
        str(tmp_path / "d.parquet")
    )
    code, out = _validate(_spec(tmp_path, {"source": "d.parquet"}), capsys)
    assert code == 2 and "data.text_field" in out and "d.parquet" in out
