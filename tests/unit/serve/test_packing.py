"""Padding-free classifier passes: same logits as padded passes, or padded passes kept."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tests.fixtures.tiny_models import build_tokenizer
from tests.unit.serve._serve_support import run_app

from honed.serve.engine import loading, packing
from honed.serve.engine.classifier import ClassifierModel
from honed.serve.settings import ServeSettings

TEXTS = [
    "the company said net sales rose sharply in the third quarter " * 4,
    "up",
    "profits fell",
    "operating profit rose to EUR 13.1 mn from EUR 8.7 mn",
]


def _load(folder, packed: bool):
    ref = loading.parse_entry(f"sent={folder}")
    return loading.load_classifier(ref, "cpu", packing=packed)


def _padded_logits(model, tok, ids):
    enc = tok.pad({"input_ids": ids}, return_tensors="pt")
    with torch.inference_mode():
        return model(**enc).logits


@pytest.fixture(scope="module")
def mean_pooled(tiny, tmp_path_factory):
    """The tiny BERT classifier read through honed's masked-mean head (its pooler dropped)."""
    folder = tmp_path_factory.mktemp("mean") / "clf"
    shutil.copytree(tiny["clf"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "honed_pooling": "mean"}))
    return folder


@pytest.mark.parametrize("which", ["cls", "mean"])
def test_packed_logits_equal_the_padded_pass(tiny, mean_pooled, which):
    folder = tiny["clf"] if which == "cls" else mean_pooled
    model, tok, _ = _load(folder, packed=True)
    assert packing.is_packed(model)
    ids = tok(TEXTS)["input_ids"]
    want = _padded_logits(model, tok, ids)  # (4, labels); padded path, SDPA attention
    with torch.inference_mode():
        got = packing.logits(model, ids)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5)
    # Each text alone gives its own row: no text attends to another one in the pack.
    with torch.inference_mode():
        alone = torch.cat([packing.logits(model, [row]) for row in ids])
    assert torch.allclose(alone, want, atol=1e-5)


def test_a_head_that_does_not_fit_keeps_padded_passes(tiny):
    from transformers import AutoConfig, RobertaConfig, RobertaForSequenceClassification

    tok = build_tokenizer()
    # The tiny BERT's sizes in a RoBERTa, whose head is dense + tanh + out_proj.
    cfg = RobertaConfig.from_dict(AutoConfig.from_pretrained(tiny["clf"]).to_dict())
    model = RobertaForSequenceClassification(cfg).eval()
    assert not packing.enable(model, tok)  # its head is a two-layer block, not one Linear
    assert model.config._attn_implementation != packing.ATTENTION


def test_a_failed_probe_restores_the_attention(tiny, monkeypatch):
    model, tok, _ = _load(tiny["clf"], packed=False)
    before = model.config._attn_implementation
    real = packing.logits
    monkeypatch.setattr(packing, "logits", lambda m, ids: real(m, ids) + 1.0)
    assert not packing.enable(model, tok)
    assert model.config._attn_implementation == before
    monkeypatch.setattr(packing, "logits", real)
    assert packing.enable(model, tok)


def test_attention_without_packed_lengths_is_sdpa(tiny):
    """The registered attention serves padded calls too (same model, no packed kwarg)."""
    packed, tok, _ = _load(tiny["clf"], packed=True)
    plain, _, _ = _load(tiny["clf"], packed=False)
    ids = tok(TEXTS)["input_ids"]
    assert torch.allclose(
        _padded_logits(packed, tok, ids), _padded_logits(plain, tok, ids), atol=1e-6
    )


def test_the_server_packs_by_default_and_can_be_told_not_to(tiny):
    async def go(c, app):
        assert app.state.engine.classifiers["sent"].packed is want
        r = await c.post("/v1/classify", json={"model": "sent", "input": TEXTS})
        assert r.status_code == 200
        got.append([d["score"] for d in r.json()["data"]])

    got: list[list[float]] = []
    for want in (True, False):
        settings = ServeSettings(models=[f"sent={tiny['clf']}"], classify_packing=want)
        run_app(settings, go)
    assert got[0] == pytest.approx(got[1], abs=1e-5)


def test_gpu_servers_keep_padded_passes(tiny, monkeypatch):
    """Packing is decided on CPU; another device never probes (padded passes there)."""
    calls = []
    monkeypatch.setattr(packing, "enable", lambda *a: calls.append(a) or True)
    ref = loading.parse_entry(f"sent={tiny['clf']}")
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)
    model, _, _ = loading.load_classifier(ref, "cuda", packing=True)
    assert calls == []
    assert ClassifierModel("sent", model, None, [], ServeSettings(models=[])).packed is False
