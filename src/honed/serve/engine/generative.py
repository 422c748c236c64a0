"""The generative model of the engine: one causal LM base (+ hot-swappable LoRA adapters).

Requests are queued per model and micro-batched (`batching.MicroBatcher`). Generation rows of
different adapters share one forward pass (peft mixed batches, `adapter_names=[...]`). Adapter
load/unload runs on the model's worker thread between batches, behind an asyncio.Lock per
adapter name; unloading waits until no queued or running request uses the adapter
(reference count), so a hot swap never fails an in-flight request.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from honed.errors import HonedError
from honed.models import adapters
from honed.models.adapters import AdapterNotFound
from honed.models.fast_decode import STATIC_LEN, StaticDecoder, decoder_for, use_static
from honed.serve.engine import loading
from honed.serve.engine.batching import MicroBatcher
from honed.serve.engine.continuous import RunningBatch, check_supported
from honed.serve.engine.errors import Conflict, EngineError, InvalidRequest, NotFound
from honed.serve.engine.generation import GenJob, Row, SamplingParams, run_batch
from honed.serve.settings import ServeSettings

log = logging.getLogger("honed.serve")


@dataclass(frozen=True)
class AdapterSlot:
    internal: str  # the peft adapter name (never reused, so a swap can load beside the old one)
    source: str
    sha256: str
    version: str | None = None  # the registry version ("NAME/3") when loaded from a registry ref


class GenerativeModel:
    """A causal LM with hot-swappable LoRA adapters behind one micro-batching queue."""

    kind = "generate"
    # Which version answers (set by honed.serve.engine.loading.stamp when loaded; an adapter
    # id answers with its AdapterSlot's version and sha256 instead): the registry version
    # ("NAME/3", None for a folder), the weights digest (16 hex), the traffic arm.
    version: str | None = None
    digest: str | None = None
    arm: str = "primary"
    labels: list[str] | None = None  # a generator has no label set

    def __init__(
        self,
        name: str,
        model: Any,
        tokenizer: Any,
        settings: ServeSettings,
        device: str = "cpu",
        merged_adapter: str | None = None,
        base_digest: str | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.settings = settings
        self.device = device
        self.merged_adapter = merged_adapter
        self._base_digest = base_digest
        self.adapters: dict[str, AdapterSlot] = {}
        self._refs: Counter[str] = Counter()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._released: asyncio.Event | None = None
        self._ids = itertools.count()
        self.on_batch: Callable[[int], None] | None = None
        self.batcher: MicroBatcher[GenJob] | None = None
        self.solo: StaticDecoder | None = None  # the batch-1 fast path (settings.decode)
        self.compile_s: float | None = None  # its warm-up (compile) time at load

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        if s.continuous_batching:
            check_supported(self.model)
        self.batcher = MicroBatcher(
            self.name,
            self._run,
            s.max_batch_size,
            s.max_wait_ms,
            s.max_queue,
            size=lambda job: job.params.n,
            on_batch=self.on_batch,
        )
        self._released = asyncio.Event()
        self.batcher.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()

    def warmup(self) -> None:
        """One real forward pass (readiness means the weights compute, not just load)."""
        import torch

        ids = self.encode_text("hello") or [self.tokenizer.eos_token_id or 0]
        with torch.inference_mode():
            self.model(input_ids=torch.tensor([ids], device=self.device))
        if self.solo is None and use_static(self.settings.decode, self.model):
            self.solo = decoder_for(self.model, 1, STATIC_LEN)  # fast_generate shares it
            self.compile_s = self.solo.warmup()  # compiling here, not on the first request

    # -- names -----------------------------------------------------------------------------
    def ids(self) -> list[tuple[str, str, str | None]]:
        """(id, kind, parent) for /v1/models."""
        if self.merged_adapter is not None:
            return [(self.merged_adapter, "adapter", self.name)]
        return [(self.name, "generate", None)] + [(a, "adapter", self.name) for a in self.adapters]

    def serves(self, model_id: str) -> bool:
        return model_id in {i for i, _, _ in self.ids()}

    @property
    def peft(self) -> bool:
        return hasattr(self.model, "peft_config")

    # -- tokens ----------------------------------------------------------------------------
    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters one token stands for: its vocabulary string's length (byte-level
        BPE and SentencePiece strings have one character per byte or character, WordPiece's
        '##' only adds). Bounds how few tokens a text can become, before tokenizing it."""
        return max((len(t) for t in self.tokenizer.get_vocab()), default=1)

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return list(tok(text, add_special_tokens=False)["input_ids"])
        # No template shipped: a plain transcript the base model can at least continue.
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return self.encode_text(text)

    # -- requests --------------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], model_id: str, params: SamplingParams) -> GenJob:
        """Queue a generation; the caller reads `job.events` and must not block the loop."""
        assert self.batcher is not None, "engine not started"
        adapter = self._target(model_id)
        if not prompt_ids:
            prompt_ids = [self.tokenizer.bos_token_id or self.tokenizer.eos_token_id or 0]
        deadline = time.monotonic() + self.settings.request_timeout_s
        job = GenJob(prompt_ids, params, adapter, deadline, asyncio.get_running_loop())
        self.batcher.submit(job)  # QueueFull propagates
        if adapter is not None:
            self._refs[adapter] += 1
        return job

    def submit_all(
        self, prompts: list[list[int]], model_id: str, params: SamplingParams
    ) -> list[GenJob]:
        """One job per prompt, or none: a refusal (a full queue) cancels the jobs queued
        before it."""
        jobs: list[GenJob] = []
        try:
            for ids in prompts:
                jobs.append(self.submit(ids, model_id, params))
        except EngineError:
            for j in jobs:
                j.cancel()
            raise
        return jobs

    def _target(self, model_id: str) -> str | None:
        """The internal peft adapter for an API id (None = the base weights)."""
        if model_id == self.merged_adapter:
            return None
        if model_id == self.name and self.merged_adapter is None:
            return None
        slot = self.adapters.get(model_id)
        if slot is None:
            raise NotFound("model", model_id)
        return slot.internal

    def _run(self, jobs: list[GenJob]) -> None:
        """Worker thread: group jobs by decoding settings, one `generate` per group (or, with
        `continuous_batching`, one running batch that later jobs join)."""
        if self.settings.continuous_batching:
            self._run_continuous(jobs)
            return
        groups: dict[tuple, list[Row]] = defaultdict(list)
        for job in jobs:
            groups[job.params.batch_key()].extend(job.rows)
        try:
            for rows in groups.values():
                self._generate(rows)
        except Exception as err:  # report to every waiting request, keep the worker alive
            self._fail(jobs, err)
        finally:
            self._finish_jobs(list(jobs), lambda job: True)

    def _run_continuous(self, jobs: list[GenJob]) -> None:
        """Worker thread: decode step by step while any row is live; between steps, adapter
        loads run, finished jobs complete, and queued jobs join (honed.serve.engine.continuous)."""
        assert self.batcher is not None
        batch = RunningBatch(self.model, self.tokenizer, self.device, self.peft, self.solo)
        live: list[GenJob] = []
        try:
            while jobs or batch.rows:
                self.batcher.run_between()
                batch.model, batch.mixed = self.model, self.peft  # the first adapter wraps it
                live += jobs
                batch.admit([r for j in jobs for r in j.rows])
                batch.evict()  # rows done at their first token
                if batch.rows:
                    if self.on_batch is not None:
                        self.on_batch(len(batch.rows))
                    batch.step()
                    batch.evict()
                self._finish_jobs(live, lambda job: all(r.finished for r in job.rows))
                jobs = self.batcher.take(self.settings.max_batch_size - len(batch.rows))
        except Exception as err:  # report to every waiting request, keep the worker alive
            live += [j for j in jobs if j not in live]
            self._fail(live, err)
            self._finish_jobs(live, lambda job: True)

    @staticmethod
    def _fail(jobs: list[GenJob], err: Exception) -> None:
        log.exception("generation failed")
        for job in jobs:
            job.emit("error", f"generation failed: {type(err).__name__}")

    def _finish_jobs(self, live: list[GenJob], done: Callable[[GenJob], bool]) -> None:
        """Complete the jobs of ``live`` that are ``done``: tell them, release their adapter."""
        for job in [j for j in live if done(j)]:
            live.remove(job)
            job.emit("done")
            job.loop.call_soon_threadsafe(self._release, job)

    def _generate(self, rows: list[Row]) -> None:
        adapters = {r.job.adapter for r in rows}
        adapter = rows[0].job.adapter if self.peft else None
        if len(rows) == 1 and self.solo is not None and self.solo.takes(adapter, self.peft):
            self._decode_alone(rows[0])  # else a DoRA row, say, keeps set_adapter's path
        elif not self.peft:
            run_batch(self.model, self.tokenizer, rows, self.device, mixed=False)
        elif len(adapters) > 1:
            run_batch(self.model, self.tokenizer, rows, self.device, mixed=True)
        elif None in adapters:  # every row wants the base: switch LoRA off for this pass
            with self.model.disable_adapter():
                run_batch(self.model, self.tokenizer, rows, self.device, mixed=False)
        else:  # one adapter for the whole batch: the cheaper non-mixed path
            self.model.set_adapter(next(iter(adapters)))
            run_batch(self.model, self.tokenizer, rows, self.device, mixed=False)

    def _decode_alone(self, row: Row) -> None:
        """One row on the static path (a running batch that nobody joins)."""
        batch = RunningBatch(self.model, self.tokenizer, self.device, self.peft, self.solo)
        batch.admit([row])
        batch.evict()
        while batch.rows:
            batch.step()
            batch.evict()

    def _release(self, job: GenJob) -> None:
        if job.adapter is not None:
            self._refs[job.adapter] -= 1
            if self._refs[job.adapter] <= 0:
                del self._refs[job.adapter]
                if self._released is not None:
                    self._released.set()

    # -- adapters (admin) ------------------------------------------------------------------
    async def load_adapter(self, name: str, source: str, sha256: str | None) -> AdapterSlot:
        """Load (or replace) adapter `name`; requests keep flowing during the load."""
        if self.merged_adapter is not None:
            raise Conflict(
                "adapters are merged into the base in this deployment; "
                "restart without merge_adapter to hot-load",
                code="merged",
            )
        if name == self.name:
            raise Conflict(f"{name!r} is the base model's id", code="name_taken", param="name")
        async with self._locks[name]:
            path, digest, version = await self._check_adapter(source, sha256)
            internal = f"honed_{next(self._ids)}"
            assert self.batcher is not None
            try:
                await self.batcher.between(self._attach, path, internal)
            except (RuntimeError, ValueError, KeyError, TypeError, OSError) as err:
                raise self._attach_failed(source, internal, err) from None
            old = self.adapters.get(name)
            slot = AdapterSlot(internal, source, digest, version)
            self.adapters[name] = slot  # new requests go to the new weights from here on
            if old is not None:
                await self._drain_and_detach(old.internal)
            return slot

    async def unload_adapter(self, name: str) -> None:
        async with self._locks[name]:
            slot = self.adapters.pop(name, None)  # new requests for it now get 404
            if slot is None:
                raise NotFound("adapter", name)
            await self._drain_and_detach(slot.internal)

    async def _drain_and_detach(self, internal: str) -> None:
        assert self._released is not None and self.batcher is not None
        while self._refs.get(internal, 0) > 0:  # queued or running requests still use it
            self._released.clear()
            await self._released.wait()
        await self.batcher.between(self._detach, internal)

    async def _check_adapter(self, source: str, sha256: str | None) -> tuple[Path, str, str | None]:
        """(folder, sha256 of the weights, registry version or None) of an adapter to load.
        What the caller names may be any path: until it proves to be an adapter folder, the
        answer says only "not found or not readable" (details go to the server log)."""
        try:
            path, version = await asyncio.to_thread(loading.resolve, source)
            cfg = await asyncio.to_thread(adapters.check_adapter_folder, path)
        except AdapterNotFound as err:
            raise _not_found(source, err) from None
        except adapters.AdapterError as err:  # an adapter folder, but a broken one
            raise _bad_adapter(source, err) from None
        except HonedError as err:  # no such folder or registry ref, not an adapter folder
            raise _not_found(source, err) from None
        try:
            if str(cfg.get("task_type") or "CAUSAL_LM") != "CAUSAL_LM":
                raise InvalidRequest(
                    f"{source[:200]!r} is not a causal-LM LoRA adapter", param="source"
                )
            adapters.check_target_modules(cfg, self.model)
            digest = await asyncio.to_thread(loading.adapter_digest, path)
            trained_on = loading.base_digest_of(path)
        except adapters.AdapterError as err:  # a module the base does not have
            raise _bad_adapter(source, err) from None
        except HonedError as err:  # unreadable lineage or weights: messages hold paths
            log.warning("adapter %r refused: %s", source[:200], err)
            raise InvalidRequest(
                f"adapter {source[:200]!r} is broken: unreadable files (see the server log)",
                param="source",
                code="bad_adapter",
            ) from None
        if trained_on and trained_on != await self.base_digest():
            raise InvalidRequest(
                f"{source[:200]!r} was trained on another base model (lineage digest differs)",
                code="base_mismatch",
                param="source",
            )
        if sha256 is not None and sha256 != digest:
            raise InvalidRequest(
                "adapter weights do not match the given sha256",
                code="digest_mismatch",
                param="sha256",
            )
        return path, digest, version

    async def base_digest(self) -> str | None:
        if self._base_digest is None:
            path = getattr(self.model, "name_or_path", None)
            base = getattr(getattr(self.model, "base_model", None), "model", self.model)
            path = getattr(base, "name_or_path", path)
            if path and Path(path).is_dir():
                self._base_digest = await asyncio.to_thread(loading.folder_digest, Path(path))
        return self._base_digest

    def _attach(self, path: Path, internal: str) -> None:
        """Worker thread: inject the adapter's LoRA layers (wrapping the base on first use)."""
        if not self.peft:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=internal)
        else:
            self.model.load_adapter(str(path), adapter_name=internal)
        self.model.to(self.device).eval()

    def _attach_failed(self, source: str, internal: str, err: Exception) -> Exception:
        """A checked adapter peft still could not attach: undo what it added, answer 400.
        Running out of device memory is the server's problem, not the adapter's."""
        if type(err).__name__ == "OutOfMemoryError":
            return err
        log.error("adapter %r could not be attached: %s", source[:200], err)
        if internal in (getattr(self.model, "peft_config", None) or {}):
            try:
                self.model.delete_adapter(internal)
            except Exception:  # best effort: the adapter is not served either way
                log.exception("removing the half-attached adapter failed")
        return InvalidRequest(
            f"adapter {source[:200]!r} does not fit the base model (its weights or modules "
            "differ from what the base has; details in the server log)",
            param="source",
            code="bad_adapter",
        )

    def _detach(self, internal: str) -> None:
        active = self.model.active_adapter
        if active == internal and len(self.model.peft_config) > 1:
            other = next(a for a in self.model.peft_config if a != internal)
            self.model.set_adapter(other)
        self.model.delete_adapter(internal)

    @property
    def queue_depth(self) -> int:
        return self.batcher.depth if self.batcher else 0


def _not_found(source: str, err: Exception) -> InvalidRequest:
    log.warning("adapter %r refused: %s", source[:200], err)
    return InvalidRequest(
        f"adapter {source[:200]!r} not found or not readable: name a LoRA adapter folder or "
        "registry ref (NAME@ALIAS, NAME/VERSION) this server can read",
        param="source",
        code="adapter_not_found",
    )


def _bad_adapter(source: str, err: HonedError) -> InvalidRequest:
    """400 for an adapter folder that is broken (its message names files, never paths)."""
    return InvalidRequest(
        f"adapter {source[:200]!r} is broken: {err}", param="source", code="bad_adapter"
    )
