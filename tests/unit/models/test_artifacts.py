"""What honed writes for users: the mean-pooled architecture and its code, Hub names for bases
and licences, base lookup from relative lineage paths, the model card's metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from honed.models.heads import MODULE_FILE, load_classifier
from honed.models.packaged import hub_id_of
from honed.pipeline.card import hub_license, render_card
from honed.registry.lineage import base_model_folder, portable_path
from honed.spec import parse_spec
from honed.train.common import name_adapter_base

IDS = torch.tensor([[2, 10, 11, 12, 3, 0, 0], [2, 13, 3, 0, 0, 0, 0]])
MASK = (IDS != 0).long()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=IDS, attention_mask=MASK).logits


@pytest.fixture
def mean_folder(tiny_bert, tmp_path) -> Path:
    torch.manual_seed(0)
    model = load_classifier(tiny_bert, "mean", num_labels=3)
    model.save_pretrained(tmp_path / "mean")
    return tmp_path / "mean"


def test_older_mean_pooled_folders_still_load(mean_folder, tmp_path):
    """honed <= 0.1 saved `model_type: bert` + `honed_pooling: mean` and no code."""
    expected = _logits(load_classifier(mean_folder))
    cfg = json.loads((mean_folder / "config.json").read_text())
    cfg.update(model_type="bert", architectures=["MeanPoolBertForSequenceClassification"])
    del cfg["auto_map"]
    (mean_folder / "config.json").write_text(json.dumps(cfg))
    (mean_folder / MODULE_FILE).unlink()
    model = load_classifier(mean_folder)
    assert type(model).__name__ == "HonedMeanPoolBertForSequenceClassification"
    assert torch.allclose(_logits(model), expected, atol=1e-6)
    model.save_pretrained(tmp_path / "resaved")  # saved again: the new, refusing form
    assert json.loads((tmp_path / "resaved" / "config.json").read_text())["model_type"] == (
        "honed_mean_pool_bert"
    )
    assert (tmp_path / "resaved" / MODULE_FILE).is_file()


def test_merged_mean_pooled_lora_loads_with_remote_code(tiny_bert, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    base = load_classifier(tiny_bert, "mean", num_labels=3)
    peft = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query"]))
    torch.nn.init.normal_(peft.base_model.model.bert.encoder.layer[0].attention.self.query
                          .lora_B["default"].weight)  # fmt: skip
    expected = _logits(peft)
    merged = peft.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    assert (tmp_path / "merged" / MODULE_FILE).is_file()
    stock = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "merged", trust_remote_code=True
    )
    assert type(stock).__module__.startswith("transformers_modules.")
    assert torch.allclose(_logits(stock), expected, atol=1e-5)


def test_cls_pooled_classifiers_stay_stock(tiny_bert, tmp_path):
    load_classifier(tiny_bert, "cls", num_labels=2).save_pretrained(tmp_path / "cls")
    cfg = json.loads((tmp_path / "cls" / "config.json").read_text())
    assert cfg["model_type"] == "bert" and "auto_map" not in cfg
    assert not (tmp_path / "cls" / MODULE_FILE).exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CC BY-NC-SA 3.0 (non-commercial)", ("cc-by-nc-sa-3.0", None)),
        ("Apache License 2.0", ("apache-2.0", None)),
        ("MIT", ("mit", None)),
        ("GPLv3", ("gpl-3.0", None)),
        ("CC0 1.0", ("cc0-1.0", None)),
        ("Our own research licence", ("other", "our-own-research")),
        ("", (None, None)),
    ],
)
def test_licences_map_to_hub_ids(text, expected):
    assert hub_license(text) == expected


def test_hub_ids_of_bases(tmp_path):
    assert hub_id_of("packaged:all-minilm-l6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_id_of("packaged:smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id_of("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert hub_id_of(str(tmp_path)) is None
    assert hub_id_of("./models/x") is None


def test_lineage_base_is_found_from_relative_and_absolute_paths(tiny_bert, tmp_path):
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    rel = portable_path(tiny_bert, run)
    assert not Path(rel).is_absolute()
    assert base_model_folder(run, {"base_model": {"path": rel}}) == tiny_bert.resolve()
    absolute = {"base_model": {"path": str(tiny_bert)}}  # older honed versions
    assert base_model_folder(run, absolute) == tiny_bert.resolve()
    assert base_model_folder(run, {}, "no-such-folder") is None
    assert portable_path("packaged:all-minilm-l6-v2", run) == "packaged:all-minilm-l6-v2"


@pytest.mark.parametrize(
    ("record", "name"),
    [
        ({"source": "packaged:all-minilm-l6-v2", "kind": "packaged",
          "hub_id": "sentence-transformers/all-MiniLM-L6-v2"},
         "sentence-transformers/all-MiniLM-L6-v2"),
        ({"source": "org/model", "kind": "hub", "hub_id": "org/model"}, "org/model"),
        ({"source": "../models/my-base", "kind": "local", "hub_id": None}, "my-base"),
    ],
)  # fmt: skip
def test_adapter_config_names_the_base_portably(tmp_path, record, name):
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "/home/someone/models/my-base", "r": 4})
    )
    name_adapter_base(tmp_path, record)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg == {"base_model_name_or_path": name, "r": 4}


def test_card_of_a_packaged_base_names_its_hub_id(tmp_path):
    from huggingface_hub import ModelCard

    spec = parse_spec(
        {
            "name": "fin",
            "model": {"base": "packaged:all-minilm-l6-v2"},
            "data": {"source": "data.txt", "format": "phrasebank"},
            "card": {"data_license": "Some Corp Terms", "intended_use": "Testing cards."},
        }
    )
    lineage = {
        "labels": ["negative", "positive"],
        "pooling": "mean",
        "base_model": {"source": "packaged:all-minilm-l6-v2", "kind": "packaged",
                       "hub_id": "sentence-transformers/all-MiniLM-L6-v2", "digest": "d" * 64},
        "data": {"source": "../data.txt", "content_sha256": "c" * 64},
        "packages": {},
    }  # fmt: skip
    metrics = {"test_accuracy": 0.9, "test_macro_f1": 0.8}
    (tmp_path / "README.md").write_text(render_card(spec, metrics, {}, lineage))
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert (card.data.license, card.data.license_name) == ("other", "some-corp-terms")
    assert card.data.pipeline_tag == "text-classification"
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "accuracy": 0.9,
        "macro_f1": 0.8,
    }
    assert "Testing cards." in card.text and "packaged:" not in card.content.split("---")[1]


def test_a_copied_run_folder_finds_its_local_base_by_digest(tiny_bert, tmp_path):
    """A registered version is a copy elsewhere: its relative base path no longer resolves."""
    from honed.models.resolve import ResolvedModel
    from honed.registry.lineage import remember_base

    base = ResolvedModel(path=tiny_bert, source=str(tiny_bert), kind="local",
                         weight_sha256={"model.safetensors": "0" * 64})  # fmt: skip
    remember_base(base)
    lineage = {"base_model": {"path": "../gone", "digest": base.digest}}
    assert base_model_folder(tmp_path, lineage) == tiny_bert
    assert base_model_folder(tmp_path, {"base_model": {"path": "../gone", "digest": "1"}}) is None
