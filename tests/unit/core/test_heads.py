import json

import pytest
import torch

from honed.errors import ModelError
from honed.models.heads import load_classifier, resolve_pooling


@pytest.fixture
def st_bert(tiny_bert, tmp_path):
    """The tiny BERT dressed as a sentence-transformers model with mean pooling."""
    import shutil

    folder = tmp_path / "st"
    shutil.copytree(tiny_bert, folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_mean_tokens": True})
    )
    return folder


def test_auto_pooling_follows_sentence_transformers_config(tiny_bert, st_bert):
    assert resolve_pooling("auto", tiny_bert) == "cls"
    assert resolve_pooling("auto", st_bert) == "mean"
    assert resolve_pooling("cls", st_bert) == "cls"


def test_mean_pooling_ignores_padding_and_round_trips(st_bert, tmp_path):
    torch.manual_seed(0)
    model = load_classifier(st_bert, "mean", num_labels=3).eval()
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    padded = torch.tensor([[2, 10, 11, 12, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        b = model(input_ids=padded, attention_mask=mask).logits
        loss = model(input_ids=ids, labels=torch.tensor([1])).loss
    assert torch.allclose(a, b, atol=1e-5)
    assert loss is not None and loss.item() > 0
    model.save_pretrained(tmp_path / "saved")
    reloaded = load_classifier(tmp_path / "saved").eval()  # pooling read from config.json
    assert reloaded.config.honed_pooling == "mean"
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, a, atol=1e-5)


def test_cls_pooling_is_the_stock_head(tiny_bert):
    model = load_classifier(tiny_bert, "cls", num_labels=2)
    assert type(model).__name__ == "BertForSequenceClassification"


def test_mean_pooling_unsupported_head_is_a_clear_error(tmp_path):
    from transformers import RobertaConfig, RobertaModel

    cfg = RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=40)  # fmt: skip
    RobertaModel(cfg).save_pretrained(tmp_path / "rob")
    with pytest.raises(ModelError, match="pooling 'mean' is not supported"):
        load_classifier(tmp_path / "rob", "mean", num_labels=2)
