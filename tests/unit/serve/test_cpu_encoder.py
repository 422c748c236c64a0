"""honed's CPU kernels for encoder classifiers (honed.models.cpu_encoder): int8 Linear layers
close to float32, packed attention equal to torch's per text, and torch's kernels wherever
these do not apply."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from honed.models import cpu_encoder, native
from honed.models.quantize import quantize_int8

pytestmark = pytest.mark.skipif(
    cpu_encoder.unsupported() is not None, reason=f"no kernels here: {cpu_encoder.unsupported()}"
)


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize(
    ("k", "n", "bias"), [(384, 384, True), (64, 1536, True), (1536, 40, False), (8, 3, True)]
)
def test_int8_linear_is_close_to_float32(k, n, bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(k, n, bias=bias)
    x = torch.randn(2, 37, k)  # (batch, tokens, features): any leading shape
    with torch.inference_mode():
        want, got = linear(x), cpu_encoder.Int8Linear(linear)(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    # 7-bit codes per token and per output channel: ~1.6% here, torch's int8 Linear ~2.1%
    assert _relative_error(got, want) < 0.03


def test_int8_linear_gives_the_same_numbers_on_any_thread_count():
    torch.manual_seed(0)
    layer = cpu_encoder.Int8Linear(torch.nn.Linear(128, 96))
    x = torch.randn(53, 128)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = layer(x)
        torch.set_num_threads(2)
        two = layer(x)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_int8_linear_rows_are_independent():
    """Activations are quantized per token: a row's output does not depend on its batch."""
    torch.manual_seed(0)
    layer = cpu_encoder.Int8Linear(torch.nn.Linear(64, 32))
    x = torch.randn(9, 64)
    x[4] *= 100  # an outlier token
    alone = torch.cat([layer(x[i : i + 1]) for i in range(9)])
    assert torch.equal(layer(x), alone)


def test_layers_the_kernel_cannot_take_stay_for_torch():
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Linear(16, 8))
    assert not cpu_encoder.Int8Linear.fits(model[0])  # 12 inputs: not a multiple of 8
    assert cpu_encoder.quantize_linears(model) == 1
    assert type(model[0]) is torch.nn.Linear and isinstance(model[1], cpu_encoder.Int8Linear)
    with pytest.raises(ValueError, match="in_features % 8 == 0"):
        cpu_encoder.Int8Linear(torch.nn.Linear(12, 4))


@pytest.mark.parametrize("head_dim", [8, 24, 32])
@pytest.mark.parametrize("threads", [1, 2])
def test_packed_attention_equals_sdpa_text_by_text(head_dim, threads):
    torch.manual_seed(0)
    heads, lengths = 3, [1, 7, 33, 70, 2]
    tokens = sum(lengths)
    # transformers' layout: (1, tokens, heads * dim) projections viewed as (1, heads, T, dim)
    q, k, v = (
        torch.randn(1, tokens, heads * head_dim).view(1, tokens, heads, head_dim).transpose(1, 2)
        for _ in range(3)
    )
    parts = zip(q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2), strict=True)
    want = torch.cat([F.scaled_dot_product_attention(a, b, c) for a, b, c in parts], 2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = cpu_encoder.attention(q, k, v, lengths, None)
    finally:
        torch.set_num_threads(before)
    assert got.shape == (1, tokens, heads, head_dim)
    assert torch.allclose(got, want.transpose(1, 2), atol=1e-5)


def test_attention_it_does_not_take_returns_none(monkeypatch):
    q = torch.randn(1, 2, 10, 12)  # head dim 12: not a multiple of 8
    assert cpu_encoder.attention(q, q, q, [4, 6], None) is None
    q = torch.randn(1, 2, 10, 16)
    assert cpu_encoder.attention(q.bfloat16(), q.bfloat16(), q.bfloat16(), [4, 6], None) is None
    assert cpu_encoder.attention(q, q, q, [4, 5], None) is None  # lengths do not cover T
    monkeypatch.setenv("HONED_ENCODER_KERNELS", "off")
    assert cpu_encoder.attention(q, q, q, [4, 6], None) is None


def _encoder():
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_labels=2,
    )  # fmt: skip
    return BertForSequenceClassification(cfg).eval()


@pytest.mark.parametrize(
    ("env", "vnni", "kernel"),
    [("auto", False, True), ("auto", True, False), ("on", True, True), ("off", False, False)],
)
def test_quantize_int8_picks_the_kernel_by_cpu_and_setting(monkeypatch, env, vnni, kernel):
    monkeypatch.setenv("HONED_ENCODER_KERNELS", env)
    monkeypatch.setattr(cpu_encoder, "_has_vnni", lambda: vnni)
    model = quantize_int8(_encoder())
    found = {type(m).__name__ for m in model.bert.modules()}
    assert ("Int8Linear" in found) is kernel
    assert ("Linear" in found) is not kernel  # torch's dynamic int8 Linear otherwise
    assert type(model.classifier) is torch.nn.Linear  # the head stays float32
    assert not any(type(m) is torch.nn.Linear for m in model.bert.modules())


def test_a_failed_build_keeps_torch_and_says_why(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_encoder, "PREBUILT_DIR", tmp_path)  # nothing prebuilt there
    monkeypatch.setenv("CXX", "/bin/false")
    monkeypatch.setenv("HONED_HOME", str(tmp_path / "home"))  # an empty kernel cache
    cpu_encoder._library.cache_clear()
    try:
        assert "did not build" in cpu_encoder.int8_unsupported()
        model = quantize_int8(_encoder())
        assert not any(isinstance(m, cpu_encoder.Int8Linear) for m in model.modules())
    finally:
        cpu_encoder._library.cache_clear()


def test_every_kernel_builds_ahead_of_time(tmp_path):
    native.main([str(tmp_path)])
    for name in native.SOURCES:
        assert native.prebuilt(native.FOLDER / name, tmp_path).exists()


def test_a_switch_value_it_does_not_know_is_auto_and_named(monkeypatch, caplog):
    monkeypatch.setattr(native, "_WARNED", set())
    for value, want in [("off", "off"), (" No ", "off"), ("1", "on"), ("", "auto")]:
        monkeypatch.setenv("HONED_ENCODER_KERNELS", value)
        assert native.switch("HONED_ENCODER_KERNELS") == want
    monkeypatch.setenv("HONED_ENCODER_KERNELS", "of")  # a typo
    with caplog.at_level("WARNING", logger="honed.serve"):
        assert native.switch("HONED_ENCODER_KERNELS") == "auto"
    assert "HONED_ENCODER_KERNELS='of'" in caplog.text
