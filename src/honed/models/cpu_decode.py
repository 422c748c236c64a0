"""The fused CPU decode step: one batch-1 token of a Llama-family decoder in one C++ call.

``cpu_decode.cpp`` (next to this file; why it is hand-written is said there) is built once per
machine with the system C++ compiler (about a second) into ``<state>/cache/kernels`` and called
through ctypes; an image without a compiler ships it prebuilt next to this file
(``python -m honed.models.cpu_decode``, as deploy/Dockerfile's build stage does).
``StaticDecoder`` (``fast_decode``) uses it for its batch-1 steps when ``fused_unsupported``
finds nothing against it: the prompt still goes through the model's own
eager forward into the ``StaticCache``, and this step reads that cache's buffers and the
model's own parameters in place (no copy of the weights; pointers are taken again at every
prefill, so a model trained between generations, as in GRPO, is decoded with its current
weights). Anything else (batches, bfloat16, GPUs, adapters, other architectures, a machine
without AVX2 or a compiler) keeps the compiled step. ``HONED_FUSED_DECODE=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("honed.serve")

SOURCE = Path(__file__).with_name("cpu_decode.cpp")
PREBUILT_DIR = SOURCE.parent
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]
_STATIC_ROPE = {"default", "linear", "llama3"}  # inverse frequencies fixed at load


def fused_unsupported(model: Any, batch: int) -> str | None:
    """Why the fused step cannot decode ``batch`` rows of ``model``, or None when it can."""
    if os.environ.get("HONED_FUSED_DECODE", "1") == "0":
        return "HONED_FUSED_DECODE=0"
    if batch != 1:
        return "batches decode through the compiled step"
    cfg = model.config
    if getattr(cfg, "model_type", None) != "llama" or not hasattr(model, "lm_head"):
        return "not a Llama-family causal LM"
    if model.device.type != "cpu" or model.dtype != torch.float32:
        return "float32 on a CPU only"
    if cfg.attention_bias or cfg.mlp_bias or cfg.hidden_act != "silu":
        return "biases or a non-SiLU MLP"
    rope = getattr(model.model.rotary_emb, "rope_type", "default")
    if rope not in _STATIC_ROPE:
        return f"rope type {rope!r} changes with the length"
    if not all(p.is_contiguous() for p in model.parameters()):
        return "non-contiguous weights"
    return _library()[1]


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str | None]:
    """The built library (or None) and why not."""
    if platform.machine() not in (
        "x86_64",
        "AMD64",
    ) or torch.backends.cpu.get_cpu_capability() not in (
        "AVX2",
        "AVX512",
    ):
        return None, "the CPU has no AVX2"
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None and not prebuilt().exists():
        return None, "no C++ compiler found (set CXX) and no prebuilt step"
    try:
        path = prebuilt() if prebuilt().exists() else _build(cxx)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("decode: the fused CPU step did not build (%s); using the compiled step", exc)
        return None, f"the fused step did not build: {exc}"
    fn = lib.honed_llama_step
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_double, ctypes.c_void_p, ctypes.c_int64]
    fn.argtypes += [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return lib, None


def _key(*parts: str) -> str:
    return hashlib.sha256(SOURCE.read_bytes() + " ".join([*FLAGS, *parts]).encode()).hexdigest()


def prebuilt(folder: Path | None = None) -> Path:
    """Where a build made ahead of time for this source lives (default: next to it)."""
    return (folder or PREBUILT_DIR) / f"cpu_decode-{_key()[:16]}.so"


def _build(cxx: str, out: Path | None = None) -> Path:
    """Compile the source once per (source, compiler, flags) into the state cache (or ``out``);
    later processes load the file."""
    if out is None:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True)
        from honed.state import cache_dir

        out = cache_dir("kernels") / f"cpu_decode-{_key(version.stdout)[:16]}.so"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        built = Path(tmp) / out.name
        subprocess.run(
            [cxx, *FLAGS, str(SOURCE), "-o", str(built)], capture_output=True, text=True, check=True
        )
        os.replace(built, out)  # atomic: a concurrent build writes the same bytes
    log.info("decode: built the fused CPU step into %s", out)
    return out


class FusedStep:
    """The fused step for one ``StaticDecoder`` (batch 1, ``max_len`` cache columns)."""

    def __init__(self, model: Any, max_len: int) -> None:
        cfg = model.config
        attn = model.model.layers[0].self_attn
        heads, head_dim = cfg.num_attention_heads, attn.head_dim
        dims = [cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, heads]
        dims += [cfg.num_key_value_heads, head_dim, model.lm_head.out_features, max_len]
        self.model = model
        self.dims = torch.tensor([*dims, 1], dtype=torch.int64)
        self.eps = float(model.model.norm.variance_epsilon)
        with torch.inference_mode():
            # (max_len, D) cos/sin from the model's own rotary module: any static rope scaling
            # (llama3, linear) and its attention factor come with it.
            x = torch.zeros(1, dtype=torch.float32)
            cos, sin = model.model.rotary_emb(x, torch.arange(max_len)[None])
        self.cos, self.sin = cos[0].contiguous(), sin[0].contiguous()
        h, i, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads * head_dim
        size = 3 * h + 2 * heads * head_dim + 2 * kv + i + heads * max_len
        self.scratch = torch.empty(size, dtype=torch.float32)
        self.ptrs = torch.zeros(0, dtype=torch.int64)

    def bind(self, cache: Any) -> None:
        """Take the weights' and the (initialised) cache's addresses: after every prefill."""
        m = self.model.model
        ptrs = [m.embed_tokens.weight, m.norm.weight, self.model.lm_head.weight]
        ptrs = [t.data_ptr() for t in ptrs] + [self.cos.data_ptr(), self.sin.data_ptr()]
        for block, layer in zip(m.layers, cache.layers, strict=True):
            attn, mlp = block.self_attn, block.mlp
            weights = [block.input_layernorm, attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj]
            weights += [block.post_attention_layernorm, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
            ptrs += [w.weight.data_ptr() for w in weights]
            for buf in (layer.keys, layer.values, layer.cumulative_length):
                assert buf.is_contiguous() and buf.device.type == "cpu"
                ptrs.append(buf.data_ptr())
        # int64 holds the addresses' bits; the C side reads them as uint64
        self.ptrs = torch.tensor([p - (1 << 64) if p >= 1 << 63 else p for p in ptrs])

    def __call__(self, token: int, pos: int, mask: torch.Tensor) -> torch.Tensor:
        """Logits (1, V) after ``token`` at position ``pos``; writes its keys/values to the
        next cache column and advances the cache's length. ``mask``: (1, max_len) int64 with
        the new column already set."""
        self.dims[-1] = torch.get_num_threads()
        logits = torch.empty((1, int(self.dims[6])), dtype=torch.float32)
        # looked up per call, not kept: ctypes functions do not deepcopy (copy.deepcopy(model)
        # copies the decoders kept on it)
        rc = _library()[0].honed_llama_step(
            self.dims.data_ptr(),
            self.eps,
            self.ptrs.data_ptr(),
            token,
            pos,
            mask.data_ptr(),
            logits.data_ptr(),
            self.scratch.data_ptr(),
        )
        if rc != 0:
            raise ValueError(f"the static cache is full ({int(self.dims[7])} columns)")
        return logits


def main(argv: list[str] | None = None) -> None:
    """``python -m honed.models.cpu_decode [FOLDER]``: build the step ahead of time (default:
    into the installed package, where an image without a compiler finds it)."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("folder", nargs="?", type=Path, default=PREBUILT_DIR)
    folder = p.parse_args(argv).folder
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        raise SystemExit("honed.models.cpu_decode: no C++ compiler found (set CXX)")
    folder.mkdir(parents=True, exist_ok=True)
    print(_build(cxx, prebuilt(folder)))


if __name__ == "__main__":
    main()
