"""Fast decode: a static KV cache and a compiled one-token decode step (``torch.compile``).

Why: at batch 1 a small decoder spends more time per token in Python and per-op dispatch than
in reading its weights. SmolLM2-135M through ``generate`` runs ~2,000 aten ops per token
(30 layers of about 60 small ops around 7 matmuls); a compiled step fuses the elementwise work
(norms, rotary, residuals) into a few generated C++/OpenMP (or Triton) kernels and calls the
matmuls directly. Compiling needs fixed shapes, hence ``StaticCache``: keys/values live in
preallocated (batch, heads, max_len, head_dim) buffers written in place, and a (batch, max_len)
mask says which columns are real. One compiled graph per (batch size, cache length); the
compiled function is kept on the model, so every ``StaticDecoder`` of that shape reuses it.

Exactness: the compiled step computes the same float32 (or the model's dtype) operations as
the eager model in another order, so logits agree to rounding and greedy tokens match plain
``generate`` (tested on a random tiny Llama and, marked slow, on packaged SmolLM2).

Used by the server's running batch (``continuous.RunningBatch``: a lone row decodes here, and
moves back to the dynamic cache when others join) and by ``fast_generate`` (rollouts, evals).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import torch
from transformers import DynamicCache, StaticCache

from honed.errors import ModelError
from honed.models.cpu_decode import FusedStep, adapter_unsupported, fused_unsupported
from honed.models.sampling import Sampling, sample_tokens

log = logging.getLogger("honed.serve")

DecodeMode = Literal["auto", "eager", "static"]
STATIC_LEN = 512  # the server's cache length: prompt + max_tokens beyond it decode eagerly


def static_unsupported(model: Any) -> str | None:
    """Why ``model`` cannot take the static path, or None when it can."""
    if hasattr(model, "peft_config"):
        return "LoRA adapters are attached (rows name their adapter: the eager path does that)"
    if not getattr(model, "_can_compile_fullgraph", False):
        kind = getattr(model.config, "model_type", type(model).__name__)
        return f"{kind!r} does not declare torch.compile support in transformers"
    from transformers.cache_utils import StaticLayer

    kinds = {type(layer) for layer in StaticCache(config=model.config, max_cache_len=8).layers}
    if kinds != {StaticLayer}:
        return "sliding-window or hybrid cache layers"
    return None


def use_static(mode: DecodeMode, model: Any) -> bool:
    """Whether ``mode`` means the static path for ``model``; 'static' on a model that cannot
    take it is a clear error, 'auto' then quietly keeps the eager path. 'auto' also keeps it
    where a lone row would need the compiled step (a compile of 16-94 s before /readyz): it
    takes the static path only with the fused step (``cpu_decode``), ready in a second."""
    if mode == "eager":
        return False
    why = fused_unsupported(model, 1)
    if why is None:
        return True
    if mode == "auto":
        reason = f"no fused step ({why}); decode 'static' compiles one at start"
    elif (reason := static_unsupported(model)) is None:
        return True
    if mode == "static":
        raise ModelError(f"decode 'static' is not available for this model: {reason}")
    log.info("decode: eager path (%s)", reason)
    return False


def _gemv_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``nn.Linear.forward``, except for one row of float32 on a CPU while torch.compile traces
    (the static decode step): there the product is written as a reduction, (1, in) x (out, in)
    -> sum over in, which inductor turns into one OpenMP loop streaming the weights. Why: at
    batch 1 MKL's float32 matrix-vector product reads SmolLM2's weights at 7.9 GB/s on a
    2-core AVX2 machine (37% of its bandwidth; 2 threads barely help), the generated loop
    at ~12 GB/s, and the decode step as a whole went from 12.2 to 19.3 tokens/s with the same
    greedy tokens (docs/benchmarks.md, decode). Eager calls (prefill, the dynamic path, every
    other shape and dtype, GPUs) keep ``F.linear``."""
    weight = self.weight
    if (
        torch.compiler.is_compiling()
        and x.shape[:-1].numel() == 1
        and weight.dtype == torch.float32
        and weight.device.type == "cpu"
    ):
        out = (x.unsqueeze(-2) * weight).sum(-1)  # (..., 1, in) * (out, in) -> (..., out)
        return out if self.bias is None else out + self.bias
    return torch.nn.functional.linear(x, weight, self.bias)


def _use_gemv(model: Any) -> None:
    """Route the model's plain ``nn.Linear`` layers through ``_gemv_forward`` (an instance
    attribute: the module type, its parameters and state dict do not change). Subclasses
    (quantized linears such as bitsandbytes') keep their own forward."""
    for module in model.modules():
        if type(module) is torch.nn.Linear and "forward" not in module.__dict__:
            module.forward = _gemv_forward.__get__(module)


def _compiled(model: Any) -> Any:
    """``model.forward`` compiled once per model (dynamo keeps one graph per shape)."""
    fn = getattr(model, "_honed_compiled_forward", None)
    if fn is None:
        _use_gemv(model)
        # dynamic=False: one specialised graph per (batch, cache length), never symbolic
        # shapes (slower kernels); "reduce-overhead" adds CUDA graphs on a GPU, a no-op on CPU.
        mode = "reduce-overhead" if model.device.type == "cuda" else None
        fn = torch.compile(model.forward, mode=mode, dynamic=False)
        model._honed_compiled_forward = fn
    return fn


class StaticDecoder:
    """Decodes ``batch`` left-padded rows over a StaticCache of ``max_len`` columns. Every
    method runs in inference mode: the cache's buffers are inference tensors, which may be
    written in place only there. A float32 Llama-family model at batch 1 on an AVX2 CPU steps
    through the fused C++ step (``cpu_decode``; ``fused=False`` keeps the compiled one)."""

    def __init__(
        self, model: Any, batch: int = 1, max_len: int = STATIC_LEN, fused: bool = True
    ) -> None:
        self.model = model
        self.batch = batch
        self.max_len = max_len
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.mask = torch.zeros((batch, max_len), dtype=torch.long, device=model.device)
        self.pos = torch.zeros((batch, 1), dtype=torch.long, device=model.device)
        self.length = 0  # columns in use
        self.fused: FusedStep | None = None
        self._takes: dict[str | None, bool] = {}  # adapter -> fused step runs it
        if fused and (why := fused_unsupported(model, batch)) is None:
            self.fused = FusedStep(model, max_len)
        elif fused and batch == 1:
            log.info("decode: compiled step, not the fused one (%s)", why)
        self._step = None if self.fused else _compiled(model)

    def fits(self, tokens: int) -> bool:
        return tokens <= self.max_len

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Eager forward of the (B, T) prompts into the cache; last-position logits (B, V)."""
        self.cache.reset()
        self.mask.zero_()
        width = ids.shape[1]
        self.mask[:, :width] = mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
        )
        self.pos.copy_(positions[:, -1:] + 1)
        self.length = width
        if self.fused is not None:
            self.fused.bind(self.cache)
        return out.logits[:, -1].float()

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed (B,) tokens at each row's next position; logits (B, V) for the token after."""
        self.mask[:, self.length] = 1
        if self.fused is not None:
            logits = self.fused(int(tokens), int(self.pos), self.mask)
            self.pos += 1
            self.length += 1
            return logits
        out = self._step(
            input_ids=tokens.view(self.batch, 1),
            attention_mask=self.mask,
            position_ids=self.pos,
            cache=self.cache,
            use_cache=True,
        )
        self.pos += 1
        self.length += 1
        return out.logits[:, -1].float()

    def takes(self, adapter: str | None, peft: bool) -> bool:
        """Whether a row on peft ``adapter`` (None: base weights) of a model with (``peft``)
        or without adapters can decode here: the compiled step runs models without adapters
        only, the fused step plain LoRA too (checked once per adapter: peft names are never
        reused by the server)."""
        if self.fused is None:
            return not peft
        if adapter not in self._takes:
            why = adapter_unsupported(self.model, adapter)
            if why is not None:
                log.info("decode: adapter %r decodes eagerly (%s)", adapter, why)
            self._takes[adapter] = why is None
        return self._takes[adapter]

    @torch.inference_mode()
    def load(
        self, cache: DynamicCache, mask: torch.Tensor, pos: torch.Tensor, adapter: str | None = None
    ) -> None:
        """Take over a running batch's dynamic cache ((B, heads, T, dim) per layer), for a row
        on peft ``adapter`` (see ``takes``)."""
        width = mask.shape[1]
        for static, dyn in zip(self.cache.layers, cache.layers, strict=True):
            if not static.is_initialized:
                static.lazy_initialization(dyn.keys, dyn.values)
            static.keys[:, :, :width] = dyn.keys
            static.values[:, :, :width] = dyn.values
            static.cumulative_length.fill_(width)
        self.mask.zero_()
        self.mask[:, :width] = mask
        self.pos.copy_(pos.view(self.batch, 1))
        self.length = width
        if self.fused is not None:
            self.fused.bind(self.cache, adapter)

    @torch.inference_mode()
    def export(self) -> DynamicCache:
        """The cache's used columns as a DynamicCache (to hand a running batch back)."""
        out = DynamicCache(config=self.model.config)
        for i, layer in enumerate(self.cache.layers):
            keys = layer.keys[:, :, : self.length].clone()
            out.update(keys, layer.values[:, :, : self.length].clone(), i)
        return out

    def warmup(self) -> float:
        """Compile the step now (seconds taken): at load, never on a request's time."""
        start = time.perf_counter()
        ids = torch.zeros((self.batch, 1), dtype=torch.long, device=self.model.device)
        with torch.inference_mode():
            logits = self.prefill(ids, torch.ones_like(ids))
            for _ in range(2):  # the second call proves no recompilation is pending
                logits = self.step(logits.argmax(-1))
            self.cache.reset()
        took = time.perf_counter() - start
        kind = "built the fused" if self.fused else "compiled the"
        log.info("decode: %s static decode step in %.1f s", kind, took)
        return took


def _bucket(tokens: int) -> int:
    """Cache lengths come in powers of two from the server's (whose graph is then shared):
    few compiled graphs, little waste."""
    size = STATIC_LEN
    while size < tokens:
        size *= 2
    return size


def decoder_for(model: Any, batch: int, tokens: int) -> StaticDecoder:
    """A StaticDecoder for ``batch`` rows of up to ``tokens`` tokens, kept on the model."""
    pool: dict[tuple[int, int], StaticDecoder] = model.__dict__.setdefault("_honed_decoders", {})
    key = (batch, _bucket(tokens))
    if key not in pool:
        pool[key] = StaticDecoder(model, *key)
    return pool[key]


def fast_generate(
    model: Any,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    attention_mask: torch.Tensor | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int = 0,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``model.generate`` for left-padded prompts, through the static compiled path:
    (B, T + new) token ids, rows padded with ``pad_token_id`` after their eos. Greedy when
    ``temperature`` is 0 (the same tokens as ``generate(do_sample=False)``), else plain
    sampling at ``temperature``. Models the static path does not support go to ``generate``.
    The first call per (batch, length bucket) compiles; later ones reuse the graph."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if isinstance(eos_token_id, int):
        eos_token_id = [eos_token_id]
    eos = torch.tensor(eos_token_id or [], dtype=torch.long, device=input_ids.device)
    if static_unsupported(model) is not None:
        return _plain(model, input_ids, attention_mask, max_new_tokens, pad_token_id, temperature)
    decoder = decoder_for(model, input_ids.shape[0], input_ids.shape[1] + max_new_tokens)
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    out = [input_ids]
    with torch.inference_mode():
        logits = decoder.prefill(input_ids, attention_mask)
        for i in range(max_new_tokens):
            token, _ = sample_tokens(logits, Sampling(temperature), generator)
            token = torch.where(done, torch.full_like(token, pad_token_id), token)
            out.append(token[:, None])
            done |= torch.isin(token, eos)
            if bool(done.all()) or i == max_new_tokens - 1:
                break
            logits = decoder.step(token)
    return torch.cat(out, 1)


def _plain(model, ids, mask, max_new_tokens, pad_token_id, temperature) -> torch.Tensor:
    sample = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature else {}
    with torch.inference_mode():
        return model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_token_id,
            do_sample=bool(temperature),
            **sample,
        )
