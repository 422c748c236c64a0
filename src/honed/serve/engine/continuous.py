"""Continuous batching for generation: rows join and leave the running batch between steps.

Why: with one ``generate`` call per micro-batch, a request that arrives while a batch runs waits
for that batch's longest row (SmolLM2 at concurrency 8: TTFT p50 2.1 s for ~100 ms of
prefill). Here the engine's worker thread decodes step by step. Between steps, queued rows
join: their prompts are prefilled in one forward pass, and their KV cache is left-padded to the
running batch's length and concatenated on the batch axis. Rows that finish (eos, stop string,
max_tokens, cancelled, past deadline) leave at once, and padding columns that no row needs any
more are cut off, so the cache stays as long as the longest live row.

Why by hand: ``generate`` fixes its batch at the start. transformers' own continuous batching
(``generate_batch``, paged attention) has no per-row LoRA adapters, stop strings or streaming
deltas, which the server needs. What is written here is the scheduling and the cache
bookkeeping; every forward pass is the model's own, with its ``DynamicCache``.

Fast path (``decode`` auto or static, honed.models.fast_decode): while the batch holds a
single row, its cache moves into a ``StaticDecoder`` and each step is the fused C++ one
(honed.models.cpu_decode; its LoRA adapter too) or, on a model without adapters, the compiled
one (batch-1 latency is where per-op overhead dominates); when rows join, the cache moves back
to a ``DynamicCache`` and the batch goes on as above.

Shapes: the running batch has B rows; ``mask`` is (B, T), with 1 on real tokens and left
padding; every cache layer holds keys/values of shape (B, heads, T, head_dim); ``last`` and
``pos`` are (B,): the token each row feeds at the next step, and its position.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from honed.errors import ModelError
from honed.models.fast_decode import StaticDecoder
from honed.models.sampling import left_pad
from honed.serve.engine.generation import BASE_ADAPTER, Row, RowDecoder, eos_ids
from honed.serve.engine.logprobs import adjust_logits, token_logprobs


def check_supported(model: Any) -> None:
    """Continuous batching pads and cuts full-attention KV caches: refuse any model whose
    cache transformers builds otherwise (sliding-window or hybrid layers)."""
    from transformers.cache_utils import DynamicLayer

    kinds = {type(layer).__name__ for layer in DynamicCache(config=model.config).layers}
    if kinds - {DynamicLayer.__name__}:
        raise ModelError(
            f"continuous batching supports full-attention decoders only; "
            f"{getattr(model.config, 'model_type', 'this model')!r} has {sorted(kinds)} cache "
            "layers: set continuous_batching to false (--no-continuous-batching)"
        )


class RunningBatch:
    """The rows decoding together on one model. Used from one thread (the engine's worker)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: str,
        mixed: bool,
        solo: StaticDecoder | None = None,
    ) -> None:
        self.model = model
        self.solo = solo  # decodes a lone row (compiled step); None: always the eager path
        self.solo_live = False  # the lone row's cache is in ``solo`` (``self.cache`` is stale)
        self.device = device
        self.mixed = mixed  # peft model: each row names its adapter (BASE_ADAPTER for none)
        self.pad_id = next(
            t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None
        )
        self.decoder = RowDecoder(tokenizer, eos_ids(model, tokenizer.eos_token_id))
        self.rows: list[Row] = []
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=device)
        self.last = torch.zeros(0, dtype=torch.long, device=device)
        self.pos = torch.zeros(0, dtype=torch.long, device=device)
        self._generators: dict[int, torch.Generator | None] = {}  # id(row) -> seeded RNG

    def admit(self, rows: list[Row]) -> None:
        """Prefill ``rows`` in one forward pass and add them to the batch (first token out)."""
        live = [r for r in rows if not r.job.expired]
        for r in rows:
            if r.job.expired:
                self.decoder.finish(r, "cancelled")
        if not live:
            return
        ids, mask = left_pad([r.job.prompt_ids for r in live], self.pad_id, self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (b, t): 0.. per row, pads at 0
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids, mask, positions, cache, live)
        for r in live:
            self._generators[id(r)] = _generator(r, self.device)
        tokens, lps = self._sample(logits, live)  # (b,)
        self._join(cache, mask, tokens, mask.sum(-1), live)
        self._feed(tokens, live, lps)

    def step(self) -> None:
        """One decode step for every row: feed ``last`` at ``pos``, sample the next token."""
        self._solo_switch()
        ones = torch.ones((len(self.rows), 1), dtype=torch.long, device=self.device)
        self.mask = torch.cat([self.mask, ones], 1)
        if self.solo_live:
            with torch.inference_mode():
                logits = self.solo.step(self.last)
        else:
            logits = self._forward(self.last[:, None], self.mask, self.pos[:, None], self.cache)
        self.pos = self.pos + 1
        self.last, lps = self._sample(logits, self.rows)
        self._feed(self.last, self.rows, lps)

    def evict(self) -> list[Row]:
        """Drop finished rows (and the padding columns no live row needs); returns them."""
        done = [r for r in self.rows if r.finished]
        if not done:
            return []
        keep = [i for i, r in enumerate(self.rows) if not r.finished]
        for r in done:
            self._generators.pop(id(r), None)
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.solo_live = False
            self.cache, self.mask = None, self.mask[:0, :0]
            self.last, self.pos = self.last[:0], self.pos[:0]
            return done
        idx = torch.tensor(keep, device=self.device)
        self.mask, self.last, self.pos = self.mask[idx], self.last[idx], self.pos[idx]
        # Leading columns that are padding in every remaining row: cut them off.
        lead = int((self.mask.cumsum(1) == 0).sum(1).min())
        self.mask = self.mask[:, lead:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[idx, :, lead:]
            layer.values = layer.values[idx, :, lead:]
        return done

    # -- internals -------------------------------------------------------------------------
    def _solo_switch(self) -> None:
        """Move the cache into the static decoder when one row decodes alone (and it fits),
        and back out when that no longer holds (rows joined, an adapter was attached)."""
        if self.solo is None or not self.rows:
            return
        row = self.rows[0]
        adapter = row.job.adapter if self.mixed else None
        # the compiled step never runs a peft model (an adapter attached mid-decode sends the
        # row back); the fused one runs LoRA rows too
        alone = len(self.rows) == 1 and self.solo.takes(adapter, self.mixed)
        if self.solo_live and not alone:
            self.cache, self.solo_live = self.solo.export(), False
        elif alone and not self.solo_live:
            left = row.job.params.max_tokens - len(row.tokens)
            if self.solo.fits(self.mask.shape[1] + left):
                self.solo.load(self.cache, self.mask, self.pos, adapter)
                self.cache, self.solo_live = None, True

    def _forward(self, ids, mask, positions, cache, rows: list[Row] | None = None):
        """Last-position logits (B, vocab) in float32; ``cache`` is extended in place."""
        extra: dict[str, Any] = {}
        if self.mixed:
            extra["adapter_names"] = [r.job.adapter or BASE_ADAPTER for r in rows or self.rows]
        with torch.inference_mode():
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                **extra,
            )
        return out.logits[:, -1].float()

    def _join(self, cache, mask, tokens, positions, rows: list[Row]) -> None:
        """Concatenate newly prefilled rows to the batch, left-padding the shorter side."""
        if self.solo_live:  # rows join a lone row: back to the dynamic cache
            self.cache, self.solo_live = self.solo.export(), False
        if self.cache is None:
            self.cache, self.mask, self.last, self.pos = cache, mask, tokens, positions
            self.rows = list(rows)
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_left(old.keys, width, 2), _left(new.keys, width, 2)])
            old.values = torch.cat([_left(old.values, width, 2), _left(new.values, width, 2)])
        self.mask = torch.cat([_left(self.mask, width, 1), _left(mask, width, 1)])
        self.last = torch.cat([self.last, tokens])
        self.pos = torch.cat([self.pos, positions])
        self.rows += rows

    def _sample(self, logits: torch.Tensor, rows: list[Row]) -> tuple[torch.Tensor, list]:
        """(B,) next tokens: argmax for greedy rows, temperature + top-p for the others, after
        each row's penalties and logit_bias; with the logprobs of the rows that asked."""
        logits = adjust_logits(logits, rows)
        tokens = logits.argmax(-1)
        for i, r in enumerate(rows):
            p = r.job.params
            if p.greedy:
                continue
            probs = _top_p(torch.softmax(logits[i] / p.temperature, -1), p.top_p)
            gen = self._generators.get(id(r))
            tokens[i] = torch.multinomial(probs, 1, generator=gen).squeeze(0)
        return tokens, token_logprobs(logits, tokens, rows)

    def _feed(self, tokens: torch.Tensor, rows: list[Row], lps: list) -> None:
        for r, t, lp in zip(rows, tokens.tolist(), lps, strict=True):
            self.decoder.add(r, int(t), lp)


def _left(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``x`` zero-padded on the left of ``dim`` (1 for masks, 2 for cache keys) to ``width``."""
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim) + [missing, 0]  # F.pad lists dims from the last
    return F.pad(x, pad)


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches ``top_p`` (vocab,)."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(descending=True)
    outside = sorted_p.cumsum(0) - sorted_p >= top_p
    # The most likely token always stays, even for a top_p that rounds to 0 in float32.
    outside[0] = False
    return probs.scatter(0, order[outside], 0.0)


def _generator(row: Row, device: str) -> torch.Generator | None:
    """Seeded requests get their own RNG per choice (seed + choice index): the same seed gives
    the same text whatever else is in the batch."""
    seed = row.job.params.seed
    if seed is None or row.job.params.greedy:
        return None
    return torch.Generator(device=device).manual_seed(seed + row.index)
