"""A bounded async queue drained in micro-batches by one worker thread per model."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from honed.serve.engine.errors import QueueFull

log = logging.getLogger("honed.serve")

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    """Collects items until `max_batch` rows or `max_wait_ms`, then hands them to `run`.

    `run(items)` executes in a single worker thread (the model is not thread-safe and the
    same thread also performs adapter load/unload, so those never overlap a forward pass).
    `size(item)` is how many rows an item adds to a batch (e.g. `n` choices, or texts).
    """

    def __init__(
        self,
        name: str,
        run: Callable[[list[T]], Any],
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        size: Callable[[T], int] = lambda _: 1,
        on_batch: Callable[[int], None] | None = None,
        workers: int = 1,
    ) -> None:
        self.name = name
        self._run = run
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.size = size
        self.on_batch = on_batch
        self.queue: asyncio.Queue[T] = asyncio.Queue(maxsize=max_queue)
        # workers > 1 only for stateless models (classifiers): batches then run in parallel.
        self.workers = workers
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"honed-{name}")
        self._tasks: list[asyncio.Task] = []
        self._carry: T | None = None  # an item that did not fit the last batch
        self._event_loop: asyncio.AbstractEventLoop | None = None
        # Calls for the worker thread between batches (adapter loads): see `between`.
        self._between: queue.SimpleQueue[tuple[Callable, tuple, concurrent.futures.Future]] = (
            queue.SimpleQueue()
        )

    def start(self) -> None:
        if not self._tasks:
            loop = self._event_loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._loop()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, item: T) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise QueueFull(self.name) from None

    @property
    def depth(self) -> int:
        return self.queue.qsize() + (1 if self._carry is not None else 0)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` on the worker thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def between(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` on the worker thread between batches, or sooner: a continuous batch runs
        waiting calls between two decode steps (`run_between`), so an adapter load does not
        wait for the traffic to stop. Each call runs once, whichever comes first."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._between.put((fn, args, fut))
        self.executor.submit(self.run_between)
        return await asyncio.wrap_future(fut)

    def run_between(self) -> None:
        """Worker thread: run the calls `between` queued."""
        while True:
            try:
                fn, args, fut = self._between.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as err:  # the awaiting coroutine re-raises it
                fut.set_exception(err)

    def take(self, max_rows: int) -> list[T]:
        """Worker thread: queued items adding up to at most `max_rows` rows ([] if none), for
        a running continuous batch. The queue belongs to the event loop: taken there."""
        if (
            max_rows <= 0
            or self._event_loop is None
            or (self.queue.empty() and self._carry is None)
        ):
            return []  # (an unlocked peek: an item missed now is taken at the next step)
        fut = asyncio.run_coroutine_threadsafe(self._take(max_rows), self._event_loop)
        try:
            return fut.result(timeout=5.0)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            fut.cancel()  # the loop is shutting down
            return []

    async def _take(self, max_rows: int) -> list[T]:
        items: list[T] = []
        rows = 0
        while True:
            if self._carry is not None:
                item, self._carry = self._carry, None
            else:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    return items
            if rows + self.size(item) > max_rows:
                self._carry = item
                return items
            items.append(item)
            rows += self.size(item)

    async def _collect(self) -> list[T]:
        first = self._carry if self._carry is not None else await self.queue.get()
        self._carry = None
        batch, rows = [first], self.size(first)
        deadline = time.monotonic() + self.max_wait
        while rows < self.max_batch:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout=left)
                except TimeoutError:
                    break
            if rows + self.size(item) > self.max_batch:
                self._carry = item
                break
            batch.append(item)
            rows += self.size(item)
        return batch

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            if self.on_batch is not None:
                self.on_batch(sum(self.size(i) for i in batch))
            try:
                await self.call(self._run, batch)
            except Exception:  # one bad batch must not kill the worker; items report errors
                log.exception("batch failed in %s", self.name)
