"""Classifier engine: length-sorted padded or packed passes, bf16 weights, int8 quantization."""

from __future__ import annotations

import pytest
import torch
from tests.unit.serve._serve_support import run_app

from honed.errors import ModelError
from honed.models import cpu_encoder
from honed.serve.engine import loading
from honed.serve.engine.classifier import ClassifierModel
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


def _classifier(tiny, packing=False, folder="clf", **over) -> ClassifierModel:
    ref = loading.parse_entry(f"sent={tiny[folder]}")
    settings = ServeSettings(models=[], **over)
    parts = loading.load_classifier(ref, "cpu", packing=packing)
    return ClassifierModel("sent", *parts, settings=settings)


def _scores(results: list[dict]) -> list[float]:
    return [r["score"] for r in results]


@pytest.mark.parametrize("packing", [False, True])
def test_passes_cover_every_text_once_under_the_budget(tiny, packing):
    clf = _classifier(tiny, packing, classify_token_budget=64, max_batch_size=3)
    assert clf.packed is packing
    lengths = [len(ids) for ids in clf._token_ids(TEXTS)]
    passes = clf._passes(lengths)
    assert sorted(i for p in passes for i in p) == list(range(len(TEXTS)))
    for p in passes:
        assert len(p) <= 3
        # Padded passes pay rows x longest; packed ones their real tokens. A text longer
        # than the budget runs alone; every other pass fits the budget.
        cost = sum(lengths[i] for i in p) if packing else len(p) * max(lengths[i] for i in p)
        assert cost <= 64 or len(p) == 1
    order = [i for p in passes for i in p]
    assert [lengths[i] for i in order] == sorted(lengths)


@pytest.mark.parametrize("packing", [False, True])
def test_sorted_passes_give_the_same_scores_in_request_order(tiny, packing):
    one_pass = _classifier(tiny, classify_token_budget=10**6, max_batch_size=64)
    many = _classifier(tiny, packing, classify_token_budget=40, max_batch_size=2)
    want, want_counts = one_pass.classify(TEXTS)
    assert len(many._passes([len(x) for x in many._token_ids(TEXTS)])) > 2
    got, counts = many.classify(TEXTS)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert _scores(got) == pytest.approx(_scores(want), abs=1e-5)
    assert counts == want_counts
    assert counts[TEXTS.index("")] == 1  # the empty text ran as one unknown token


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


@pytest.mark.parametrize("packing", [False, True])
def test_bfloat16_weights_keep_labels_and_float32_scores(tiny, packing):
    ref = loading.parse_entry(f"sent={tiny['clf']}")
    model, tok, labels = loading.load_classifier(ref, "cpu", torch.bfloat16, packing=packing)
    assert next(model.parameters()).dtype == torch.bfloat16
    clf = ClassifierModel("sent", model, tok, labels, ServeSettings(models=[]))
    assert clf.packed is packing
    want, _ = _classifier(tiny).classify(TEXTS)
    got, _ = clf.classify(TEXTS)
    for w, g in zip(want, got, strict=True):
        assert isinstance(g["score"], float)
        assert g["score"] == pytest.approx(w["score"], abs=0.02)


@pytest.mark.parametrize("packing", [False, True])
def test_int8_quantizes_the_encoder_and_keeps_the_head(tiny, packing):
    ref = loading.parse_entry(f"sent={tiny['clf']}")
    model, tok, labels = loading.load_classifier(ref, "cpu", torch.float32, "int8", packing)
    encoder = getattr(model, model.base_model_prefix)
    # honed's int8 kernel on CPUs without VNNI, torch's dynamic int8 Linear elsewhere
    quantized = [
        m
        for m in encoder.modules()
        if "quantized" in type(m).__module__ or isinstance(m, cpu_encoder.Int8Linear)
    ]
    assert quantized, "no quantized Linear in the encoder"
    assert not any(isinstance(m, torch.nn.Linear) for m in encoder.modules())
    assert isinstance(model.classifier, torch.nn.Linear)  # the head stays float32
    clf = ClassifierModel("sent", model, tok, labels, ServeSettings(models=[]))
    assert clf.packed is packing
    want, _ = _classifier(tiny).classify(TEXTS)
    got, _ = clf.classify(TEXTS)
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
    assert args.classify_packing is None  # unset: the settings' default (on) stands
    assert parser.parse_args(["serve", "--no-classify-packing"]).classify_packing is False
    with pytest.raises(ValueError, match="classify_quantization"):
        ServeSettings(models=[], classify_quantization="int4")
