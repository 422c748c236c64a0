"""End to end: two successive `honed run`s of one model. The second adds a feedback export as a
source; it reuses the champion's frozen evaluation set byte for byte, and the corrections of
training texts change those texts' labels in its training data."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from tests.e2e.test_run_cli import honed
from tests.helpers import classification_spec_dict

from honed.data.frozen import normalise
from honed.monitor.feedback import FeedbackStore, export_training_data
from honed.monitor.requestlog import RequestLogger, make_engine, save_model_version
from honed.registry.store import Registry

FLIP = {"negative": "positive", "positive": "neutral", "neutral": "negative"}


def _phrasebank_rows(path: Path) -> list[tuple[str, str]]:
    lines = path.read_bytes().decode("iso-8859-1").splitlines()
    return [(t.strip(), label.strip()) for t, _, label in (x.rpartition("@") for x in lines if x)]


def _export_corrections(tmp_path: Path, corrections: list[tuple[str, str, str]]) -> Path:
    """Corrections sent through the feedback store and exported as `honed monitor
    feedback-export` does."""
    engine = make_engine(f"sqlite:///{tmp_path / 'requests.db'}")
    logger = RequestLogger(engine=engine)
    # What the server records the first time a version answers: its label set.
    save_model_version(
        engine,
        {"model": "tiny-sentiment", "version": "tiny-sentiment/1", "digest": "0" * 16,
         "kind": "classify", "labels": ["negative", "neutral", "positive"]},
    )  # fmt: skip
    for i, (text, predicted, _) in enumerate(corrections):
        logger.submit({"id": f"req{i}", "model": "tiny-sentiment", "input_text": text,
                       "predicted_label": predicted, "digest": "0" * 16})  # fmt: skip
    logger.flush()
    store = FeedbackStore(engine=engine, logger=logger)
    for i, (_, _, label) in enumerate(corrections):
        store.add({"request_id": f"req{i}", "rating": "down", "correction": label})
    out = tmp_path / "feedback.jsonl"
    export_training_data(store, out, kind="classification")
    logger.close()
    engine.dispose()
    return out


def test_second_run_reuses_the_frozen_set_and_applies_corrections(
    tmp_path, tiny_bert, phrasebank_file
):
    spec1 = classification_spec_dict(tiny_bert, phrasebank_file, tmp_path / "run1")
    spec1["eval"]["baselines"] = ["majority"]
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(spec1))
    honed("run", str(tmp_path / "one.yaml"), cwd=tmp_path)
    Registry().promote("tiny-sentiment", "1")
    frozen1 = (tmp_path / "run1" / "eval" / "frozen_test.jsonl").read_bytes()
    held_out = {normalise(json.loads(x)["text"]) for x in frozen1.decode().splitlines()}

    # Corrections of five texts the first model trained on (not in the frozen set).
    training = [(t, lab) for t, lab in _phrasebank_rows(phrasebank_file)
                if normalise(t) not in held_out][:5]  # fmt: skip
    corrections = [(t, lab, FLIP[lab]) for t, lab in training]
    feedback = _export_corrections(tmp_path, corrections)

    spec2 = json.loads(json.dumps(spec1))
    data = spec2["data"]
    data["sources"] = [
        {"path": data.pop("source"), "format": data.pop("format"), "name": "phrases"},
        {"path": str(feedback), "kind": "feedback", "name": "feedback"},
    ]
    spec2["output_dir"] = str(tmp_path / "run2")
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(spec2))
    out = honed("run", str(tmp_path / "two.yaml"), cwd=tmp_path).stdout
    assert "feedback (feedback): given 5, kept 5, overrode 5, lost 0" in out
    assert "frozen eval set of tiny-sentiment/1 (champion)" in out
    assert "registered: tiny-sentiment version 2" in out

    run2 = tmp_path / "run2"
    assert (run2 / "eval" / "frozen_test.jsonl").read_bytes() == frozen1
    meta = json.loads((run2 / "eval" / "frozen_test.meta.json").read_text())
    assert meta["origin"]["kind"] == "reused" and meta["origin"]["first"]["kind"] == "split"
    report = json.loads((run2 / "data_report.json").read_text())
    assert report["frozen_eval"]["reused"] is True
    by_text = {o["text"]: o for o in report["overrides"]}
    for text, before, after in corrections:
        record = by_text[text]
        assert record["label"] == after and record["previous_labels"] == [before]
        assert record["split"] in {"train", "validation"}  # never the frozen test split
    assert any(o["split"] == "train" for o in report["overrides"])
    sources = {s["name"]: s for s in report["sources"]}
    assert sources["phrases"]["lost_by_reason"]["overridden"] == 5
    assert sources["phrases"]["lost_by_reason"]["leaked_frozen"] == len(held_out)
    for name in ("data_report.json", "lineage.json", "spec.yaml", "eval/frozen_test.meta.json"):
        assert str(tmp_path) not in (run2 / name).read_text(), name  # portable run folder
    # The run folder's spec runs again as written (sources relative to the folder).
    rerun = yaml.safe_load((run2 / "spec.yaml").read_text())
    assert rerun["data"]["source"] is None and len(rerun["data"]["sources"]) == 2
