"""The ner task: spans -> BIO labels on word pieces, a run through `honed run`'s pipeline, the
folder loaded by stock transformers' token-classification pipeline, seqeval metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.tiny_cases import ner as case

from honed.errors import DataError
from honed.evals.ner import entity_metrics
from honed.train.tasks import get_task
from honed.train.tasks.ner import bio_labels, piece_labels


def test_piece_labels_follow_character_offsets() -> None:
    spans = [{"entity_type": "PERSON", "start": 0, "end": 10}]
    # [CLS] "maria" "ro" "##ssi" "lives" [SEP]
    offsets = [(0, 0), (0, 5), (6, 8), (8, 10), (11, 16), (0, 0)]
    assert piece_labels(offsets, spans) == [None, "B-PERSON", "I-PERSON", "I-PERSON", "O", None]
    assert bio_labels(["PERSON", "LOCATION"]) == [
        "O", "B-LOCATION", "I-LOCATION", "B-PERSON", "I-PERSON",
    ]  # fmt: skip


def test_entity_metrics_per_type() -> None:
    gold = [["B-PERSON", "I-PERSON", "O", "B-LOCATION"]]
    pred = [["B-PERSON", "I-PERSON", "O", "O"]]
    scores = entity_metrics(gold, pred)
    assert scores["precision"] == 1.0 and scores["recall"] == 0.5
    assert scores["per_class"]["PERSON"]["f1"] == 1.0
    assert scores["per_class"]["LOCATION"] == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1,
    }  # fmt: skip


def test_field_names_and_types_are_mapped(tmp_path: Path) -> None:
    spec = case.build_spec(tmp_path, "full")
    data = get_task("ner").prepare_data(spec)
    assert data.labels == ["O", "B-LOCATION", "I-LOCATION", "B-PERSON", "I-PERSON"]
    row = data.train[0]
    assert {s["entity_type"] for s in row["spans"]} == {"PERSON", "LOCATION"}
    person = next(s for s in row["spans"] if s["entity_type"] == "PERSON")
    assert row["text"][person["start"] : person["end"]] in case.PEOPLE
    assert data.report["entity_counts"] == {"LOCATION": 40, "PERSON": 40}


def test_bad_spans_name_the_row(tmp_path: Path) -> None:
    spec = case.build_spec(tmp_path, "full")
    rows = case.ner_rows(10)
    rows[3]["spans"][0]["end_position"] = 10_000
    Path(spec.data.source).write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"pii\.json:4.*PERSON .* is not inside the text"):
        get_task("ner").prepare_data(spec)


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory) -> Path:
    """One tiny full run through honed run's pipeline (not registered)."""
    from honed.pipeline.run import train_and_evaluate

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("ner")
    spec = case.build_spec(tmp, "full", steps=None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HONED_HOME", str(tmp / "home"))
        result = train_and_evaluate(spec, register=False)
    return result.paths.root


def test_run_folder_metrics_and_card(ner_run: Path) -> None:
    metrics = json.loads((ner_run / "metrics.json").read_text())
    for key in ("test_precision", "test_recall", "test_f1"):
        assert 0.0 <= metrics[key] <= 1.0
    assert set(metrics["test"]["per_class"]) <= {"PERSON", "LOCATION"}
    card = (ner_run / "README.md").read_text()
    assert (
        'pipeline("token-classification"' in card and "pipeline_tag: token-classification" in card
    )
    assert (ner_run / "eval" / "frozen_test.jsonl").is_file()  # the held-out rows, kept


def test_stock_pipeline_loads_the_run_folder(ner_run: Path) -> None:
    from transformers import pipeline

    from honed.models.tagger import Tagger

    tag = pipeline("token-classification", model=str(ner_run), aggregation_strategy="simple")
    text = case.ner_rows(1, seed=5)[0]["full_text"]
    found = tag(text)
    assert isinstance(found, list)
    for entity in found:
        assert entity["entity_group"] in {"PERSON", "LOCATION"}
        assert text[entity["start"] : entity["end"]].strip()
    # honed's tagger gives the same spans, and survives a text longer than the model's positions
    tagger = Tagger(ner_run)
    (mine,) = tagger([text])
    assert [(e.entity, e.start, e.end) for e in mine] == [
        (e["entity_group"], e["start"], e["end"]) for e in found
    ]
    (long,) = tagger([" ".join([text] * 20)])
    assert all(e.entity in {"PERSON", "LOCATION"} for e in long)


def test_pyfunc_returns_spans(ner_run: Path, tmp_path: Path) -> None:
    import mlflow

    from honed.registry.pyfunc import ARTIFACT, HonedModel, signature

    mlflow.pyfunc.save_model(
        str(tmp_path / "pyfunc"),
        python_model=HonedModel(),
        artifacts={ARTIFACT: str(ner_run)},
        signature=signature("ner"),
        pip_requirements=[],
    )
    model = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc"))
    out = model.predict(["profit in market the said", "sales in company"])
    assert list(out.columns) == ["entities"] and len(out) == 2
    for row in out["entities"]:
        assert all({"entity", "start", "end", "score"} <= set(e) for e in row)
