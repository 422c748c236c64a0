"""Classifier engine: length-sorted forward passes, bf16 weights and int8 quantization."""

from __future__ import annotations

import pytest
import torch
from tests.unit.serve._serve_support import run_app

from honed.errors import ModelError
from honed.serve import loading
from honed.serve.engine import ClassifierModel
from honed.serve.settings import ServeSettings

TEXTS = [
    "up",
    "the company said net sales rose sharply in the third quarter " * 6,
    "profits fell",
    "",
    "operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the period " * 3,
    "the board proposes a dividend",
    "shares",
]


def _classifier(tiny, **over) -> ClassifierModel:
    ref = loading.parse_entry(f"sent={tiny['clf']}")
    settings = ServeSettings(models=[], **over)
    return ClassifierModel("sent", *loading.load_classifier(ref, "cpu"), settings=settings)


def test_passes_cover_every_text_once_under_the_budget(tiny):
    clf = _classifier(tiny, classify_token_budget=64, max_batch_size=3)
    lengths = [len(ids) for ids in clf.tokenizer(TEXTS)["input_ids"]]
    passes = clf._passes(TEXTS)
    assert sorted(i for p in passes for i in p) == list(range(len(TEXTS)))
    for p in passes:
        assert len(p) <= 3
        longest = max(lengths[i] for i in p)
        # A text longer than the budget runs alone; every other pass fits the budget.
        assert len(p) * longest <= 64 or len(p) == 1
    order = [i for p in passes for i in p]
    assert [lengths[i] for i in order] == sorted(lengths)


def test_sorted_passes_give_the_same_scores_in_request_order(tiny):
    one_pass = _classifier(tiny, classify_token_budget=10**6, max_batch_size=64)
    many = _classifier(tiny, classify_token_budget=40, max_batch_size=2)
    want, _ = one_pass._forward(TEXTS)
    assert len(many._passes(TEXTS)) > 2
    got = [None] * len(TEXTS)
    for rows in many._passes(TEXTS):
        out, _ = many._forward([TEXTS[i] for i in rows])
        for i, r in zip(rows, out, strict=True):
            got[i] = r
    for w, g in zip(want, got, strict=True):
        assert g["label"] == w["label"]
        assert g["score"] == pytest.approx(w["score"], abs=1e-5)


def test_api_answers_in_input_order_with_a_small_budget(tiny):

    settings = ServeSettings(models=[f"sent={tiny['clf']}"], classify_token_budget=32)

    async def go(c, app):
        body = {"model": "sent", "input": TEXTS}
        batched = (await c.post("/v1/classify", json=body)).json()["data"]
        single = [
            (await c.post("/v1/classify", json={"model": "sent", "input": t})).json()["data"][0]
            for t in TEXTS
        ]
        assert [b["label"] for b in batched] == [s["label"] for s in single]
        for b, s in zip(batched, single, strict=True):
            assert b["score"] == pytest.approx(s["score"], abs=1e-5)

    run_app(settings, go)


def test_bfloat16_weights_keep_labels_and_float32_scores(tiny):
    ref = loading.parse_entry(f"sent={tiny['clf']}")
    model, tok, labels = loading.load_classifier(ref, "cpu", torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    clf = ClassifierModel("sent", model, tok, labels, ServeSettings(models=[]))
    want, _ = _classifier(tiny)._forward(TEXTS)
    got, _ = clf._forward(TEXTS)
    for w, g in zip(want, got, strict=True):
        assert isinstance(g["score"], float)
        assert g["score"] == pytest.approx(w["score"], abs=0.02)


def test_int8_quantizes_the_encoder_and_keeps_the_head(tiny):
    ref = loading.parse_entry(f"sent={tiny['clf']}")
    model, tok, labels = loading.load_classifier(ref, "cpu", torch.float32, "int8")
    encoder = getattr(model, model.base_model_prefix)
    quantized = [m for m in encoder.modules() if "quantized" in type(m).__module__]
    assert quantized, "no quantized Linear in the encoder"
    assert not any(isinstance(m, torch.nn.Linear) for m in encoder.modules())
    assert isinstance(model.classifier, torch.nn.Linear)  # the head stays float32
    clf = ClassifierModel("sent", model, tok, labels, ServeSettings(models=[]))
    want, _ = _classifier(tiny)._forward(TEXTS)
    got, _ = clf._forward(TEXTS)
    for w, g in zip(want, got, strict=True):
        assert g["score"] == pytest.approx(w["score"], abs=0.05)


def test_int8_refuses_gpu_and_half_precision(tiny):
    ref = loading.parse_entry(f"sent={tiny['clf']}")
    model, _, _ = loading.load_classifier(ref, "cpu")
    with pytest.raises(ModelError, match="CPU only"):
        loading.quantize_int8(model, "cuda")
    with pytest.raises(ModelError, match="float32"):
        loading.quantize_int8(model, "cpu", torch.bfloat16)


def test_serve_flags_reach_the_settings():
    import argparse

    from honed.serve import commands

    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(
        ["serve", "clf=x", "--classify-quantization", "int8", "--classify-token-budget", "512"]
    )
    assert args.classify_quantization == "int8"
    assert args.classify_token_budget == 512
    with pytest.raises(ValueError, match="classify_quantization"):
        ServeSettings(models=[], classify_quantization="int4")
