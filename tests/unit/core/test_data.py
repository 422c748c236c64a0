import json

import pandas as pd
import pytest
from tests.helpers import write_phrasebank

from honed.data.config import DataConfig
from honed.data.dataset import load_classification, normalise
from honed.data.loaders import load_raw
from honed.errors import DataError

LABELS = ["negative", "neutral", "positive"]


def cfg(**kw) -> DataConfig:
    base = {"source": "x", "labels": LABELS, "split": {"test_size": 0.2, "validation_size": 0.2}}
    base.update(kw)
    return DataConfig(**base)


def rows(n=20):
    out = []
    for i in range(n):
        for label in LABELS:
            out.append({"text": f"{label} sentence number {i}", "label": label})
    return out


def test_jsonl_csv_parquet_json_load_the_same(tmp_path):
    data = rows(10)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in data))
    (tmp_path / "d.json").write_text(json.dumps(data))
    pd.DataFrame(data).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(data).to_parquet(tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.json", "d.csv", "d.parquet"):
        raw = load_raw(str(tmp_path / name), cfg())
        assert [r.fields["text"] for r in raw.records] == [r["text"] for r in data], name
        assert raw.sha256


def test_phrasebank_iso_8859_1(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(
        "Operating profit rose to EUR 1.2 mn @positive\nNet sales fell â\xa3 @negative\n".encode(
            "iso-8859-1"
        )
    )
    raw = load_raw(str(path), cfg(format="phrasebank", encoding="iso-8859-1"))
    assert raw.records[0].fields == {
        "text": "Operating profit rose to EUR 1.2 mn",
        "label": "positive",
    }
    assert raw.records[1].line == 2


def test_field_mapping(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        "\n".join(json.dumps({"sentence": r["text"], "y": r["label"]}) for r in rows(10))
    )
    data = load_classification(cfg(text_field="sentence", label_field="y"), str(path))
    assert data.train[0].keys() >= {"text", "label"}


def test_bad_rows_fail_with_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps(r) for r in rows(10)]
    lines[2] = json.dumps({"text": "", "label": "positive"})
    lines[4] = json.dumps({"text": "no label here"})
    lines[6] = json.dumps({"text": "odd", "label": "bullish"})
    lines[8] = "{broken json"
    path.write_bytes("\n".join(lines).encode() + b'\n{"text": "\xff\xfe", "label": "neutral"}\n')
    with pytest.raises(DataError) as err:
        load_classification(cfg(), str(path))
    text = str(err.value)
    assert f"{path}:3: empty or missing text" in text
    assert f"{path}:5: missing label" in text
    assert f"{path}:7: unknown label 'bullish'" in text
    assert f"{path}:9: broken JSON" in text
    assert f"{path}:31: undecodable bytes" in text
    assert "on_bad_rows: skip" in text


def test_bad_rows_skip_reports_them(tmp_path):
    path = write_phrasebank(
        tmp_path / "p.txt", extra=["no at sign here", "text@bullish", "@neutral"]
    )
    data = load_classification(cfg(format="phrasebank", on_bad_rows="skip"), str(path))
    assert len(data.report["bad_rows"]) == 3
    assert all(":" in b for b in data.report["bad_rows"])


def test_dedup_and_leakage(tmp_path):
    data_rows = rows(15)
    data_rows += [data_rows[0], data_rows[1]]  # exact duplicates
    data_rows += [{"text": r["text"].upper() + "  ", "label": r["label"]} for r in data_rows[:10]]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in data_rows))
    data = load_classification(cfg(), str(path))
    assert data.report["duplicates_removed"] == 2
    test_keys = {normalise(r["text"]) for r in data.test}
    assert not test_keys & {normalise(r["text"]) for r in data.train + data.validation}
    assert sum(data.report["leakage_removed"].values()) > 0


def test_stratified_seeded_split(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows(50)))
    a = load_classification(cfg(), str(path))
    b = load_classification(cfg(), str(path))
    assert a.content_sha256 == b.content_sha256
    counts = a.report["label_counts"]["test"]
    assert max(counts.values()) - min(counts.values()) <= 1
    assert len(a.test) == 30
    other = load_classification(cfg(split={"seed": 7}), str(path))
    assert other.content_sha256 != a.content_sha256


def test_labels_inferred_when_not_declared(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows(10)))
    assert load_classification(cfg(labels=None), str(path)).labels == sorted(LABELS)


def test_label_names_rename_integer_labels(tmp_path):
    path = tmp_path / "d.jsonl"
    data = [{"text": f"text {i}", "label": i % 2} for i in range(40)]
    path.write_text("\n".join(json.dumps(r) for r in data))
    names = {"0": "benign", "1": "injection"}
    split = load_classification(cfg(labels=["benign", "injection"], label_names=names), str(path))
    assert split.labels == ["benign", "injection"]
    assert {r["label"] for r in split.train} == {"benign", "injection"}


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_raw(str(tmp_path / "none.jsonl"), cfg())
    (tmp_path / "d.xyz").write_text("x")
    with pytest.raises(DataError, match="cannot tell the format"):
        load_raw(str(tmp_path / "d.xyz"), cfg())


def test_too_few_rows_to_split(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows(1)))
    with pytest.raises(DataError, match="cannot split"):
        load_classification(cfg(), str(path))


def test_report_has_counts_and_lengths(phrasebank_file):
    data = load_classification(
        cfg(format="phrasebank", encoding="iso-8859-1"), str(phrasebank_file)
    )
    report = data.report
    assert set(report["rows"]) == {"train", "validation", "test"}
    assert report["length"]["train"]["chars_mean"] > 0
    assert sum(report["rows"].values()) == 90


def test_hf_dataset_saved_to_disk(tmp_path):
    import datasets

    datasets.Dataset.from_list(rows(10)).save_to_disk(str(tmp_path / "ds"))
    data = load_classification(cfg(format="hf"), str(tmp_path / "ds"))
    assert sum(data.report["rows"].values()) == 30
    assert data.source_sha256


def test_csv_undecodable_line_is_reported(tmp_path):
    path = tmp_path / "d.csv"
    body = "text,label\n" + "\n".join(f"{r['text']},{r['label']}" for r in rows(10))
    path.write_bytes(body.encode() + b"\nbad \xff bytes,positive\n")
    with pytest.raises(DataError, match=r"d\.csv:32: undecodable bytes"):
        load_classification(cfg(), str(path))
