"""Encoder classifiers on CPU through ``cpu_encoder.cpp``: int8 Linear layers and per-text
attention for packed passes (why they are hand-written, and their layouts, is said there).

- ``Int8Linear`` replaces a float32 ``nn.Linear`` for inference: weights per output channel
  and activations per token, 7 bits each, int32 accumulation, float32 out. ``quantize_int8``
  (``honed.models.quantize``) uses it on CPUs without VNNI, where it runs 1.2-1.8x torch's
  dynamic int8 Linear; on CPUs with VNNI (AVX512-VNNI, AVX-VNNI) torch's fbgemm kernels use
  the instruction this kernel does without, so they stay.
- ``attention`` runs a packed pass's attention (``honed.serve.engine.packing``) in one call
  instead of one ``scaled_dot_product_attention`` per text.

``HONED_ENCODER_KERNELS``: unset or ``auto`` as above; ``0``/``false``/``no``/``off`` keeps
torch's kernels for both; ``on`` uses these for int8 even where VNNI is present (to compare).
"""

from __future__ import annotations

import ctypes
import functools
import threading
from pathlib import Path
from typing import Any

import torch

from honed.models import native

SOURCE = Path(__file__).with_name("cpu_encoder.cpp")
PREBUILT_DIR = SOURCE.parent
_BLOCK = 16  # output channels per packed block (cpu_encoder.cpp's kBlock)
MAX_HEAD_DIM = 256  # cpu_encoder.cpp's kMaxHeadDim


def _mode() -> str:
    return native.switch("HONED_ENCODER_KERNELS")


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str | None]:
    lib, why = native.load(SOURCE, PREBUILT_DIR, "the int8 encoder kernels")
    if lib is None:
        return None, why
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.honed_q8_pack.argtypes = [p, i64, i64, p, p, p]
    lib.honed_q8_linear.argtypes = [p, i64, i64, p, p, p, p, i64, p, p, ctypes.c_int]
    lib.honed_packed_attention.argtypes = [p, p, p, p, p, i64, i64, i64, ctypes.c_float, p, p]
    lib.honed_packed_attention.argtypes.append(ctypes.c_int)
    for fn in (lib.honed_q8_pack, lib.honed_q8_linear, lib.honed_packed_attention):
        fn.restype = ctypes.c_int
    return lib, None


@functools.cache
def _has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_vnni" in flags or " avx_vnni" in flags


def unsupported() -> str | None:
    """Why the kernels cannot run here, or None."""
    if _mode() == "off":
        return "HONED_ENCODER_KERNELS is off"
    return _library()[1]


def int8_unsupported() -> str | None:
    """Why ``Int8Linear`` is not used here (torch's dynamic int8 Linear is), or None."""
    if _mode() == "auto" and _has_vnni():
        return "the CPU has VNNI, which torch's fbgemm int8 kernels use"
    return unsupported()


class Int8Linear(torch.nn.Module):
    """A float32 ``nn.Linear`` quantized for inference: ``y = x W^T + b`` with W as 7-bit codes
    per output channel and x quantized per token (7 bits, asymmetric) at each call. Input
    features must be a multiple of 8 (``fits``). No gradient flows through it."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        if not self.fits(linear):
            raise ValueError(
                f"Int8Linear needs float32 CPU weights and in_features % 8 == 0, not {linear}"
            )
        self.in_features, self.out_features = linear.in_features, linear.out_features
        channels = -(-self.out_features // _BLOCK) * _BLOCK  # padded to whole blocks
        weight = linear.weight.detach().contiguous()
        self.register_buffer("packed", torch.empty(channels * self.in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.empty(channels))
        self.register_buffer("colsum", torch.empty(channels, dtype=torch.int32))
        self.register_buffer("bias", torch.zeros(channels))
        if linear.bias is not None:
            self.bias[: self.out_features] = linear.bias.detach()
        rc = _library()[0].honed_q8_pack(
            weight.data_ptr(),
            self.out_features,
            self.in_features,
            self.packed.data_ptr(),
            self.scale.data_ptr(),
            self.colsum.data_ptr(),
        )
        assert rc == 0, "fits() let through a shape the kernel refuses"

    @staticmethod
    def fits(linear: Any) -> bool:
        w = getattr(linear, "weight", None)
        return (
            type(linear) is torch.nn.Linear
            and w is not None
            and w.dtype == torch.float32
            and w.device.type == "cpu"
            and linear.in_features % 8 == 0
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features).to(torch.float32).contiguous()  # (M, K)
        m, k = rows.shape
        out = torch.empty(m, self.out_features)  # (M, N)
        work = _scratch(-(-m * k // 64) * 64 + 8 * m)  # codes, then 2M floats
        rc = _library()[0].honed_q8_linear(
            rows.data_ptr(),
            m,
            k,
            self.packed.data_ptr(),
            self.scale.data_ptr(),
            self.colsum.data_ptr(),
            self.bias.data_ptr(),
            self.out_features,
            out.data_ptr(),
            work.data_ptr(),
            torch.get_num_threads(),
        )
        assert rc == 0
        return out.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


_LOCAL = threading.local()


def _scratch(nbytes: int) -> torch.Tensor:
    """This thread's work buffer, grown to ``nbytes`` (kept between calls: a fresh buffer of a
    new size each call went to mmap and back, and its page faults cost ~15% of a pass until
    glibc's allocation threshold caught up, thousands of requests into serving)."""
    buf = getattr(_LOCAL, "buf", None)
    if buf is None or buf.numel() < nbytes:
        buf = _LOCAL.buf = torch.empty(max(nbytes, 1 << 20), dtype=torch.uint8)
    return buf


def quantize_linears(module: torch.nn.Module) -> int:
    """Replace every ``nn.Linear`` under ``module`` that ``Int8Linear.fits`` (in place);
    returns how many. The caller has checked ``int8_unsupported``."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if Int8Linear.fits(child):
                setattr(parent, name, Int8Linear(child))
                count += 1
    return count


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    lengths: list[int],
    scaling: float | None,
) -> torch.Tensor | None:
    """A packed pass's attention: (1, heads, T, D) float32 views whose token rows hold the
    heads side by side (transformers' layout), texts of ``lengths`` tokens one after another,
    each attending to its own tokens. Returns (1, T, heads, D), or None where this kernel does
    not apply (the caller then runs torch's attention)."""
    _, heads, tokens, dim = query.shape
    tensors = (query, key, value)
    fits = all(
        t.dtype == torch.float32
        and t.device.type == "cpu"
        and t.shape == query.shape
        and t.stride(1) == dim  # heads side by side within a token row
        and t.stride(3) == 1
        for t in tensors
    )
    if not fits or dim % 8 or dim > MAX_HEAD_DIM or sum(lengths) != tokens or unsupported():
        return None
    threads = torch.get_num_threads()
    padded = -(-max(lengths) // 32) * 32
    out = torch.empty(1, tokens, heads, dim)
    scratch = torch.empty(threads * (dim + 2) * padded)
    # held in names for the call: a temporary's buffer would be freed before C reads it
    strides = torch.tensor([t.stride(2) for t in tensors], dtype=torch.int64)
    counts = torch.tensor(lengths, dtype=torch.int64)
    rc = _library()[0].honed_packed_attention(
        query.data_ptr(),
        key.data_ptr(),
        value.data_ptr(),
        strides.data_ptr(),
        counts.data_ptr(),
        len(lengths),
        heads,
        dim,
        dim**-0.5 if scaling is None else scaling,
        out.data_ptr(),
        scratch.data_ptr(),
        threads,
    )
    assert rc == 0
    return out
