"""One generation batch: left-padded prompts, per-row stop/length/cancel, token streaming.

A batch is a list of rows (one row = one choice of one request). Rows of different adapters
share the forward pass through peft's `adapter_names=[...]` (one name per row). The streamer
sees each step's new tokens, shape (batch,), decodes them per row and pushes text deltas to
the request's asyncio queue; the stopping criterion then ends finished rows individually.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from honed.models.sampling import left_pad
from honed.serve.engine.logprobs import Entry, adjust_logits, token_logprobs, wants_processing

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" inside a mixed batch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias), ids checked in vocab
    logprobs: int | None = None  # None: not asked; k: the chosen token and the k most likely

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def batch_key(self) -> tuple:
        """Rows batch together only when their decoding settings match."""
        if self.greedy:
            return (False, None, None, None)
        return (True, self.temperature, self.top_p, self.seed)


@dataclass(eq=False)
class Row:
    """One choice being generated; owned by the worker thread while its batch runs."""

    job: GenJob
    index: int
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: str | None = None
    logprobs: list = field(default_factory=list)  # one logprobs.Entry per token, when asked
    logprobs_sent: int = 0  # entries already sent with a delta

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(eq=False)
class GenJob:
    """A request's generation: its rows, its event queue, and its adapter (internal name)."""

    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None
    deadline: float
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    rows: list[Row] = field(default_factory=list)
    enqueued_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None

    def __post_init__(self) -> None:
        self.rows = [Row(self, i) for i in range(self.params.n)]

    def emit(self, *event: Any) -> None:
        """Thread-safe: hand an event to the request's coroutine."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def expired(self) -> bool:
        return self.cancelled or time.monotonic() > self.deadline

    @property
    def completion_tokens(self) -> int:
        return sum(len(r.tokens) for r in self.rows)


class RowDecoder:
    """Per-row token bookkeeping: eos, stop strings, max_tokens, deltas held back at stops."""

    def __init__(self, tokenizer, eos_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids

    def add(self, row: Row, token: int, logprob: Entry | None = None) -> None:
        if row.finished:
            return  # finished rows keep receiving pad tokens until the whole batch ends
        job = row.job
        if job.expired:
            self.finish(row, "cancelled")
            return
        if token in self.eos_ids:
            self.finish(row, "stop")
            return
        if job.first_token_at is None:
            job.first_token_at = time.monotonic()
        row.tokens.append(token)
        if logprob is not None:
            row.logprobs.append(logprob)
        row.text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        if self._cut_at_stop(row):
            self.finish(row, "stop")
            return
        self._emit_safe(row)
        if len(row.tokens) >= job.params.max_tokens:
            self.finish(row, "length")

    def _cut_at_stop(self, row: Row) -> bool:
        stops = row.job.params.stop
        if not stops:
            return False
        longest = max(len(s) for s in stops)
        start = max(0, row.emitted - longest)
        hits = [p for s in stops if (p := row.text.find(s, start)) >= 0]
        if not hits:
            return False
        row.text = row.text[: min(hits)]
        return True

    def _emit_safe(self, row: Row) -> None:
        # Hold back what could still become a stop string, and a half-decoded UTF-8 char.
        holdback = max((len(s) for s in row.job.params.stop), default=1) - 1
        end = len(row.text) - holdback
        while end > row.emitted and row.text[end - 1] == "\ufffd":
            end -= 1
        if end > row.emitted:
            self._send(row, end)

    @staticmethod
    def _send(row: Row, end: int) -> None:
        """Emit the text up to ``end`` with the logprobs of the tokens added since the last
        delta: a token whose text is held back (a possible stop string, half a character, a
        special token) travels with the text that follows, or with the row's last delta, so
        every generated token's logprob is sent once (a stop string's tokens included)."""
        entries = row.logprobs[row.logprobs_sent :]
        row.logprobs_sent = len(row.logprobs)
        row.job.emit("delta", row.index, row.text[row.emitted : end], entries)
        row.emitted = end

    def finish(self, row: Row, reason: str) -> None:
        if row.finished:
            return
        pending = len(row.text) > row.emitted or len(row.logprobs) > row.logprobs_sent
        if reason != "cancelled" and pending:
            self._send(row, len(row.text))
        row.finish_reason = reason
        row.job.emit("finish", row.index, reason)


class RowStreamer(BaseStreamer):
    """Receives the prompt (B, T) once, then each step's new tokens (B,)."""

    def __init__(
        self, rows: list[Row], decoder: RowDecoder, logits: RowLogits | None = None
    ) -> None:
        self.rows = rows
        self.decoder = decoder
        self.logits = logits  # the step's adjusted logits, when a row asked for logprobs
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        value = value.view(-1)
        lps = [None] * len(self.rows)
        if self.logits is not None and self.logits.scores is not None:
            lps = token_logprobs(self.logits.scores, value, self.rows)
        for row, token, lp in zip(self.rows, value.tolist(), lps, strict=True):
            self.decoder.add(row, int(token), lp)

    def end(self) -> None:
        return None


class RowLogits(LogitsProcessor):
    """Per-row penalties and logit_bias for ``generate`` (it runs before temperature and
    top-p); keeps the step's adjusted logits for ``RowStreamer`` to read logprobs from."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self.keep = any(r.job.params.logprobs is not None for r in rows)
        self.scores: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = adjust_logits(scores, self.rows)
        if self.keep:
            self.scores = scores
        return scores


class RowsDone(StoppingCriteria):
    """Per-row stop: a row ends when the decoder finished it (eos, stop, length, cancel)."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        done = [r.finished or r.job.expired for r in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def run_batch(model, tokenizer, rows: list[Row], device: str, mixed: bool) -> None:
    """Generate for `rows` in one `generate` call (runs in the engine's worker thread)."""
    live = [r for r in rows if not r.job.expired]
    for r in rows:
        if r.job.expired:
            RowDecoder(tokenizer, set()).finish(r, "cancelled")
    if not live:
        return
    eos = tokenizer.eos_token_id
    decoder = RowDecoder(tokenizer, eos_ids(model, eos))
    ids, mask = left_pad([r.job.prompt_ids for r in live], tokenizer.pad_token_id, device)
    params = live[0].job.params  # one batch_key per batch: sampling settings are shared
    logits = RowLogits(live) if wants_processing(live) else None
    kwargs: dict[str, Any] = {
        "max_new_tokens": max(r.job.params.max_tokens for r in live),
        "do_sample": not params.greedy,
        "streamer": RowStreamer(live, decoder, logits),
        "stopping_criteria": StoppingCriteriaList([RowsDone(live)]),
        "pad_token_id": tokenizer.pad_token_id,
        "use_cache": True,
    }
    if not params.greedy:
        kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.seed is not None:
            torch.manual_seed(params.seed)
    if logits is not None:
        kwargs["logits_processor"] = LogitsProcessorList([logits])
    if mixed:
        kwargs["adapter_names"] = [r.job.adapter or BASE_ADAPTER for r in live]
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    for r in live:
        decoder.finish(r, "length")  # rows that ran out of max_new_tokens without a stop


def eos_ids(model, eos: int | None) -> set[int]:
    found = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(found) if isinstance(found, list) else ({found} if found is not None else set())
    if eos is not None:
        ids.add(eos)
    return ids
