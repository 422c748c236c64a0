"""The inference engine: one generative base (+ LoRA adapters) and any number of classifiers.

Requests are queued per model and micro-batched (`batching.MicroBatcher`). Generation rows of
different adapters share one forward pass (peft mixed batches, `adapter_names=[...]`). Adapter
load/unload runs on the model's worker thread between batches, behind an asyncio.Lock per
adapter name; unloading waits until no queued or running request uses the adapter
(reference count), so a hot swap never fails an in-flight request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from honed.errors import HonedError
from honed.models.predict import label_rows
from honed.serve import loading, packing
from honed.serve.batching import MicroBatcher
from honed.serve.continuous import RunningBatch, check_supported
from honed.serve.errors import APIError, not_found
from honed.serve.generation import GenJob, Row, SamplingParams, run_batch
from honed.serve.settings import ServeSettings

if TYPE_CHECKING:
    from honed.serve.classify_procs import ClassifierProcesses

log = logging.getLogger("honed.serve")


@dataclass(frozen=True)
class AdapterSlot:
    internal: str  # the peft adapter name (never reused, so a swap can load beside the old one)
    source: str
    sha256: str


class GenerativeModel:
    """A causal LM with hot-swappable LoRA adapters behind one micro-batching queue."""

    kind = "generate"

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
        self.batcher.submit(job)  # QueueFull propagates -> 503
        if adapter is not None:
            self._refs[adapter] += 1
        return job

    def _target(self, model_id: str) -> str | None:
        """The internal peft adapter for an API id (None = the base weights)."""
        if model_id == self.merged_adapter:
            return None
        if model_id == self.name and self.merged_adapter is None:
            return None
        slot = self.adapters.get(model_id)
        if slot is None:
            raise not_found("model", model_id)
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
        loads run, finished jobs complete, and queued jobs join (honed.serve.continuous)."""
        assert self.batcher is not None
        batch = RunningBatch(self.model, self.tokenizer, self.device, self.peft)
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
        if not self.peft:
            run_batch(self.model, self.tokenizer, rows, self.device, mixed=False)
        elif len(adapters) > 1:
            run_batch(self.model, self.tokenizer, rows, self.device, mixed=True)
        elif None in adapters:  # every row wants the base: switch LoRA off for this pass
            with self.model.disable_adapter():
                run_batch(self.model, self.tokenizer, rows, self.device, mixed=False)
        else:  # one adapter for the whole batch: the cheaper non-mixed path
            self.model.set_adapter(next(iter(adapters)))
            run_batch(self.model, self.tokenizer, rows, self.device, mixed=False)

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
            raise APIError(
                409,
                "adapters are merged into the base in this deployment; "
                "restart without merge_adapter to hot-load",
                code="merged",
            )
        if name == self.name:
            raise APIError(409, f"{name!r} is the base model's id", code="name_taken", param="name")
        async with self._locks[name]:
            path, digest = await self._check_adapter(source, sha256)
            internal = f"honed_{next(self._ids)}"
            assert self.batcher is not None
            await self.batcher.between(self._attach, path, internal)
            old = self.adapters.get(name)
            slot = AdapterSlot(internal, source, digest)
            self.adapters[name] = slot  # new requests go to the new weights from here on
            if old is not None:
                await self._drain_and_detach(old.internal)
            return slot

    async def unload_adapter(self, name: str) -> None:
        async with self._locks[name]:
            slot = self.adapters.pop(name, None)  # new requests for it now get 404
            if slot is None:
                raise not_found("adapter", name)
            await self._drain_and_detach(slot.internal)

    async def _drain_and_detach(self, internal: str) -> None:
        assert self._released is not None and self.batcher is not None
        while self._refs.get(internal, 0) > 0:  # queued or running requests still use it
            self._released.clear()
            await self._released.wait()
        await self.batcher.between(self._detach, internal)

    async def _check_adapter(self, source: str, sha256: str | None) -> tuple[Path, str]:
        try:
            path = await asyncio.to_thread(loading.resolve_folder, source)
            if loading.detect_kind(path) != "adapter":
                raise APIError(400, f"{source!r} is not a causal-LM LoRA adapter", param="source")
            digest = await asyncio.to_thread(loading.adapter_digest, path)
            trained_on = loading.base_digest_of(path)
            if trained_on and trained_on != await self.base_digest():
                raise APIError(
                    400,
                    f"{source!r} was trained on another base model (lineage digest differs)",
                    code="base_mismatch",
                    param="source",
                )
        except HonedError as err:  # unknown folder/ref, not an adapter, unreadable files
            raise APIError(400, str(err), param="source", code="bad_adapter") from None
        if sha256 is not None and sha256 != digest:
            raise APIError(
                400,
                "adapter weights do not match the given sha256",
                code="digest_mismatch",
                param="sha256",
            )
        return path, digest

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

    def _detach(self, internal: str) -> None:
        active = self.model.active_adapter
        if active == internal and len(self.model.peft_config) > 1:
            other = next(a for a in self.model.peft_config if a != internal)
            self.model.set_adapter(other)
        self.model.delete_adapter(internal)

    @property
    def queue_depth(self) -> int:
        return self.batcher.depth if self.batcher else 0


@dataclass(eq=False)
class ClassifyJob:
    texts: list[str]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    deadline: float
    prompt_tokens: int = 0


class ClassifierModel:
    """A sequence classifier; texts of many requests go through one padded forward pass."""

    kind = "classify"

    def __init__(
        self,
        name: str,
        model: Any,
        tokenizer: Any,
        labels: list[str],
        settings: ServeSettings,
        device: str = "cpu",
    ) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.labels = labels
        self.settings = settings
        self.device = device
        self.on_batch: Callable[[int], None] | None = None
        self.batcher: MicroBatcher[ClassifyJob] | None = None
        # Worker processes running the forward passes instead of this process (then model
        # and tokenizer are None here); see honed.serve.classify_procs.
        self.processes: ClassifierProcesses | None = None
        # Padding-free passes (the loader switched the model over; honed.serve.packing).
        self.packed = model is not None and packing.is_packed(model)

    @classmethod
    def in_processes(cls, name: str, processes: ClassifierProcesses, settings: ServeSettings):
        """A classifier whose batches run in ``processes`` (which hold the model)."""
        clf = cls(name, None, None, list(processes.labels), settings)
        clf.processes = processes
        return clf

    def start(self) -> None:
        s = self.settings
        self.batcher = MicroBatcher(
            self.name,
            self._run,
            s.max_batch_size,
            s.max_wait_ms,
            s.max_queue,
            size=lambda job: len(job.texts),
            on_batch=self.on_batch,
            # One batch thread per worker process: each waits on its own process.
            workers=self.processes.size if self.processes else s.classify_workers,
        )
        self.batcher.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        if self.processes is not None:
            await asyncio.to_thread(self.processes.close)
            self.processes = None

    def ids(self) -> list[tuple[str, str, str | None]]:
        return [(self.name, "classify", None)]

    def serves(self, model_id: str) -> bool:
        return model_id == self.name

    def warmup(self) -> None:
        self.classify(["warm up"])

    def submit(self, texts: list[str]) -> ClassifyJob:
        assert self.batcher is not None, "engine not started"
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.settings.request_timeout_s
        job = ClassifyJob(texts, loop.create_future(), loop, deadline)
        self.batcher.submit(job)
        return job

    def _run(self, jobs: list[ClassifyJob]) -> None:
        live = [j for j in jobs if not j.future.done() and time.monotonic() < j.deadline]
        try:
            self._classify(live)
        except Exception:
            if len(live) == 1:
                log.exception("classification failed")
                live[0].loop.call_soon_threadsafe(_fail, live[0].future, RuntimeError("failed"))
                return
            # One bad input must not fail its batch-mates: retry each request on its own.
            for job in live:
                self._run([job])

    def _classify(self, live: list[ClassifyJob]) -> None:
        texts = [t for j in live for t in j.texts]
        results, counts = self.classify(texts)
        start = 0
        for j in live:
            end = start + len(j.texts)
            j.prompt_tokens = sum(counts[start:end])
            j.loop.call_soon_threadsafe(_resolve, j.future, results[start:end])
            start = end

    def classify(self, texts: list[str]) -> tuple[list[dict], list[int]]:
        """(label/score dicts, token counts) of ``texts``, in order, on this process's model."""
        if self.processes is not None:
            return self.processes.classify(texts)
        ids = self._token_ids(texts)
        results: list[dict] = [{}] * len(texts)
        for rows in self._passes([len(x) for x in ids]):
            for i, r in zip(rows, self._forward([ids[i] for i in rows]), strict=True):
                results[i] = r
        return results, [len(x) for x in ids]

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, truncated; a text that tokenizes to nothing ("" without [CLS])
        becomes one unknown token, so every row has something to pool."""
        tok = self.tokenizer
        ids = tok(texts, truncation=True, max_length=self.settings.classify_max_length)
        filler = next(t for t in (tok.unk_token_id, tok.pad_token_id, 0) if t is not None)
        return [row or [filler] for row in ids["input_ids"]]

    def _passes(self, lengths: list[int]) -> list[list[int]]:
        """Cut a micro-batch into forward passes of similar-length texts (indices).

        A padded pass costs rows x longest row; PhraseBank-like traffic (mean 30 tokens, tail to
        150) pays ~2.5x padding in arrival order. Sorted by length, each pass takes texts while
        its cost stays under the token budget and rows under `max_batch_size`. A packed pass
        (honed.serve.packing) has no padding: its cost is its real token count.
        """
        s = self.settings
        budget = s.classify_token_budget or (2048 if self.packed else 512)
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        passes: list[list[int]] = []
        tokens = 0  # real tokens in the current pass
        for i in order:
            cur = passes[-1] if passes else None
            # Sorted ascending, so text i is the longest of the pass it joins.
            cost = tokens + lengths[i] if self.packed else (len(cur or ()) + 1) * lengths[i]
            if cur is not None and cost <= budget and len(cur) < s.max_batch_size:
                cur.append(i)
                tokens += lengths[i]
            else:
                passes.append([i])
                tokens = lengths[i]
        return passes

    def _forward(self, ids: list[list[int]]) -> list[dict]:
        """Label/score dicts of one pass over non-empty token id lists."""
        import torch

        with torch.inference_mode():
            if self.packed:
                logits = packing.logits(self.model, ids)  # (B, num_labels)
            else:
                enc = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
                enc = {k: v.to(self.device) for k, v in enc.items()}
                logits = self.model(**enc).logits  # (B, num_labels)
        probs = torch.softmax(logits.float(), dim=-1).cpu().tolist()  # floats
        return label_rows(probs, self.labels)

    @property
    def queue_depth(self) -> int:
        return self.batcher.depth if self.batcher else 0


def _resolve(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future, err: Exception) -> None:
    if not fut.done():
        fut.set_exception(err)


class Engine:
    """All models of one server process, by API id."""

    def __init__(
        self,
        generator: GenerativeModel | None = None,
        classifiers: list[ClassifierModel] | None = None,
    ) -> None:
        self.generator = generator
        self.classifiers = {c.name: c for c in classifiers or []}
        self.ready = False
        self.failure: str | None = None

    @property
    def models(self) -> list[GenerativeModel | ClassifierModel]:
        return ([self.generator] if self.generator else []) + list(self.classifiers.values())

    def ids(self) -> list[tuple[str, str, str | None]]:
        return [entry for m in self.models for entry in m.ids()]

    def generator_for(self, model_id: str) -> GenerativeModel:
        if self.generator is not None and self.generator.serves(model_id):
            return self.generator
        if model_id in self.classifiers:
            raise APIError(400, f"{model_id!r} is a classifier; use /v1/classify", param="model")
        raise not_found("model", model_id)

    def classifier_for(self, model_id: str) -> ClassifierModel:
        if model_id in self.classifiers:
            return self.classifiers[model_id]
        if self.generator is not None and self.generator.serves(model_id):
            raise APIError(
                400, f"{model_id!r} generates text; use /v1/chat/completions", param="model"
            )
        raise not_found("model", model_id)

    async def start(self, warmup: bool = True) -> None:
        for m in self.models:
            m.start()
        if warmup:
            for m in self.models:
                await m.batcher.call(m.warmup)
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        for m in self.models:
            await m.stop()

    @classmethod
    def from_settings(cls, settings: ServeSettings) -> Engine:
        """Load every model named in the settings (blocking; call in a thread)."""
        from honed.serve.loading_plan import build_engine

        return build_engine(settings)
