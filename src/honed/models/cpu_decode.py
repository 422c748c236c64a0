"""The fused CPU decode step: one batch-1 token of a Llama-family decoder (Llama, Qwen2) in one
C++ call.

``cpu_decode.cpp`` (next to this file; why it is hand-written is said there) is built once per
machine with the system C++ compiler (about a second) into ``<state>/cache/kernels`` and called
through ctypes; an image without a compiler ships it prebuilt next to this file
(``honed.models.native`` builds and loads it).
``StaticDecoder`` (``fast_decode``) uses it for its batch-1 steps when ``fused_unsupported``
finds nothing against it: the prompt still goes through the model's own eager forward into the
``StaticCache``, and this step reads that cache's buffers and the model's own parameters in
place (no copy of the weights; pointers are taken again at every prefill or cache hand-over,
so a model trained between generations, as in GRPO, is decoded with its current weights). A
row on a peft LoRA adapter adds the adapter's ``scale * B (A x)`` to each of the seven
projections it targets (``adapter_unsupported`` names what it cannot do). Anything else
(batches, bfloat16, GPUs, other architectures, a machine without AVX2 or a compiler) keeps
the compiled step. ``HONED_FUSED_DECODE=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Any

import torch

from honed.models import native

SOURCE = Path(__file__).with_name("cpu_decode.cpp")
PREBUILT_DIR = SOURCE.parent
_STATIC_ROPE = {"default", "linear", "llama3"}  # inverse frequencies fixed at load
# decoders whose layer is Llama's (RMSNorm, rotate-half rotary, GQA attention, SiLU-gated MLP;
# Qwen2 adds q/k/v biases): what cpu_decode.cpp computes
_ARCHITECTURES = {"llama", "qwen2"}
# a decoder layer's projections in the order cpu_decode.cpp reads their LoRA terms
_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MAX_RANK = 256  # cpu_decode.cpp's kMaxRank


def fused_unsupported(model: Any, batch: int) -> str | None:
    """Why the fused step cannot decode ``batch`` rows of ``model``, or None when it can."""
    if native.switch("HONED_FUSED_DECODE") == "off":
        return "HONED_FUSED_DECODE is off"
    if batch != 1:
        return "batches decode through the compiled step"
    model = _causal_lm(model)
    cfg = model.config
    if getattr(cfg, "model_type", None) not in _ARCHITECTURES or not hasattr(model, "lm_head"):
        return f"not a causal LM of {sorted(_ARCHITECTURES)}"
    if model.device.type != "cpu" or model.dtype != torch.float32:
        return "float32 on a CPU only"
    if cfg.hidden_act != "silu" or getattr(model.lm_head, "bias", None) is not None:
        return "a non-SiLU MLP or an LM head bias"
    if any(kind != "full_attention" for kind in getattr(cfg, "layer_types", None) or []):
        return "sliding-window layers"
    rope = getattr(model.model.rotary_emb, "rope_type", "default")
    if rope not in _STATIC_ROPE:
        return f"rope type {rope!r} changes with the length"
    if not all(p.is_contiguous() for p in model.parameters()):
        return "non-contiguous weights"
    return _library()[1]


def adapter_unsupported(model: Any, adapter: str | None) -> str | None:
    """Why a row on peft adapter ``adapter`` (None: the base weights) cannot take the fused
    step, or None. It computes plain LoRA on the seven projections of a decoder layer: DoRA,
    LoRA biases, other adapter types, adapters on other modules (embeddings, the LM head) and
    merged adapters keep the eager path."""
    if adapter is None:
        return None
    config = (getattr(model, "peft_config", None) or {}).get(adapter)
    if config is None or getattr(config, "peft_type", None) != "LORA":
        return f"adapter {adapter!r} is not a LoRA adapter the model holds"
    if getattr(config, "use_dora", False) or getattr(config, "lora_bias", False):
        return "DoRA or LoRA biases"
    if getattr(config, "modules_to_save", None) or getattr(config, "trainable_token_indices", None):
        return "the adapter replaces whole modules or token embeddings"
    found = 0
    for name, module in _causal_lm(model).named_modules():
        if adapter not in getattr(module, "lora_A", {}):
            continue
        if name.rsplit(".", 1)[-1] not in _PROJECTIONS or getattr(module, "merged", False):
            return f"LoRA on {name!r} (merged, or not one of the layers' projections)"
        a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        if a.shape[0] > MAX_RANK or a.dtype != torch.float32 or b.dtype != torch.float32:
            return f"LoRA weights in {a.dtype} or a rank above {MAX_RANK}"
        found += 1
    return None if found else f"adapter {adapter!r} has no LoRA layers"


def _causal_lm(model: Any) -> Any:
    """The transformers model under a peft wrapper (LoRA layers injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str | None]:
    """The built library (or None) and why not."""
    lib, why = native.load(SOURCE, PREBUILT_DIR, "the fused step")
    if lib is None:
        return None, why
    fn = lib.honed_llama_step
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_double, ctypes.c_void_p, ctypes.c_int64]
    fn.argtypes += [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return lib, None


def prebuilt(folder: Path | None = None) -> Path:
    """Where a build made ahead of time for this source lives (default: next to it)."""
    return native.prebuilt(SOURCE, folder or PREBUILT_DIR)


class FusedStep:
    """The fused step for one ``StaticDecoder`` (batch 1, ``max_len`` cache columns)."""

    def __init__(self, model: Any, max_len: int) -> None:
        model = _causal_lm(model)
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

    def bind(self, cache: Any, adapter: str | None = None) -> None:
        """Take the weights' and the (initialised) cache's addresses: after every prefill.
        ``adapter``: the peft LoRA adapter the row decodes with (None: the base weights; the
        caller has checked it with ``adapter_unsupported``)."""
        m = self.model.model
        lora: list[list[tuple[float, int]]] = []  # per layer: (scale, rank) per projection
        keep: list[Any] = []
        ptrs = [m.embed_tokens.weight, m.norm.weight, self.model.lm_head.weight]
        ptrs = [t.data_ptr() for t in ptrs] + [self.cos.data_ptr(), self.sin.data_ptr(), 0, 0]
        for block, layer in zip(m.layers, cache.layers, strict=True):
            attn, mlp = block.self_attn, block.mlp
            projections = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj]
            projections += [mlp.gate_proj, mlp.up_proj, mlp.down_proj]
            weights = [block.input_layernorm, *projections[:4], block.post_attention_layernorm]
            ptrs += [_weight(w).data_ptr() for w in weights + projections[4:]]
            for buf in (layer.keys, layer.values, layer.cumulative_length):
                assert buf.is_contiguous() and buf.device.type == "cpu"
                ptrs.append(buf.data_ptr())
            lora.append([])
            for proj in projections:
                a, b, scale = _lora(proj, adapter)
                ptrs += [a.data_ptr(), b.data_ptr()] if a is not None else [0, 0]
                keep += [a, b]
                lora[-1].append((scale, a.shape[0] if a is not None else 0))
            biases = [getattr(_base(proj), "bias", None) for proj in projections]
            ptrs += [0 if bias is None else bias.data_ptr() for bias in biases]
        self._lora_weights = keep  # the pointers' tensors live as long as this binding
        if adapter is not None:
            self.lora_scales = torch.tensor([[s for s, _ in row] for row in lora])
            self.lora_ranks = torch.tensor([[r for _, r in row] for row in lora])
            ptrs[5:7] = [self.lora_scales.data_ptr(), self.lora_ranks.data_ptr()]
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
            raise ValueError(
                {
                    1: f"the static cache is full ({int(self.dims[7])} columns)",
                    2: f"a LoRA rank above {MAX_RANK}",
                }.get(rc, f"token {token} or position {pos} out of range")
            )
        return logits


def _base(module: Any) -> Any:
    """A projection's own layer, under a peft LoRA layer when one is injected."""
    return module.get_base_layer() if hasattr(module, "base_layer") else module


def _weight(module: Any) -> torch.Tensor:
    return _base(module).weight


def _lora(module: Any, adapter: str | None) -> tuple[Any, Any, float]:
    """(A (r, in), B (out, r), scale) of ``adapter`` on ``module``, or (None, None, 0)."""
    if adapter is None or adapter not in getattr(module, "lora_A", {}):
        return None, None, 0.0
    a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
    return a.contiguous(), b.contiguous(), float(module.scaling[adapter])


def main(argv: list[str] | None = None) -> None:
    """``python -m honed.models.cpu_decode [FOLDER]``: ``honed.models.native``'s build of every
    kernel ahead of time (the name deploy/Dockerfile used first)."""
    native.main(argv)


if __name__ == "__main__":
    main()
