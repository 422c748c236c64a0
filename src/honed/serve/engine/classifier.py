"""A sequence classifier behind a micro-batching queue: texts of many requests go through one
forward pass (padded, or packed: honed.serve.engine.packing), in this process or in worker
processes (honed.serve.engine.classify_procs)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from honed.models.predict import label_rows
from honed.serve.engine import packing
from honed.serve.engine.batching import MicroBatcher
from honed.serve.settings import ServeSettings

log = logging.getLogger("honed.serve")


class WorkerPool(Protocol):
    """Worker processes holding the classifier (honed.serve.engine.classify_procs)."""

    labels: list[str]
    size: int  # processes, one batch thread each
    restarts: int  # processes replaced after dying

    def classify(self, texts: list[str]) -> tuple[list[dict], list[int]]: ...

    def close(self) -> None: ...


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
    # Which version answers (set by honed.serve.engine.loading.stamp when loaded): the
    # registry version ("NAME/3", None for a folder), the weights digest (16 hex), and the
    # traffic arm ("primary" unless a canary router says otherwise). `labels`: in id order.
    version: str | None = None
    digest: str | None = None
    arm: str = "primary"

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
        # and tokenizer are None here); see honed.serve.engine.classify_procs.
        self.processes: WorkerPool | None = None
        # Padding-free passes (the loader switched the model over; honed.serve.engine.packing).
        self.packed = model is not None and packing.is_packed(model)

    @classmethod
    def in_processes(cls, name: str, processes: WorkerPool, settings: ServeSettings):
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
        (honed.serve.engine.packing) has no padding: its cost is its real token count.
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
