"""Classifier forward passes in worker processes (``classify_processes`` > 0).

Why processes: a classifier batch is mostly torch kernels, but between them each layer's
Python (module calls, tokenization, building the response) holds the GIL, and so do the event
loop and the request logger. With batch *threads*, everything shares one interpreter: int8
MiniLM on 2 cores (packed passes) served 332 req/s with two batch threads and 385 with two
worker processes, p99 latency 329 vs 188 ms (``bench/serve_classify.py``, median of 5 rounds).
Here each worker process holds its own copy of the classifier (the same loader as in-process
serving, one torch thread by default) and the server process keeps HTTP, batching, metrics and
logging; a batch thread per worker sends texts over a pipe and waits (the wait releases the
GIL).

Failures: a worker that raises answers with the error (the batch is then retried request by
request, as in-process); a worker that dies (killed, out of memory) is replaced by a fresh one
and the batch runs again there, so in-flight requests are not lost to a crash (a batch that
kills two workers in a row fails). When the server process dies, its workers see the pipe
close and exit.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import queue
import signal
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from honed.errors import ModelError
from honed.serve.engine.loading import ModelRef
from honed.serve.settings import ServeSettings

log = logging.getLogger("honed.serve")

#: Seconds a worker may take to import torch and load its model before start-up fails.
START_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to load the same classifier as the server would."""

    ref: ModelRef
    settings: ServeSettings
    device: str
    dtype: str  # torch dtype name, e.g. "float32" (torch dtypes pickle, but keep it plain)


def _worker_main(conn: Connection, spec: WorkerSpec) -> None:
    """Child process: load the classifier, report its labels, then answer batches of texts
    with ``("ok", (results, token_counts))`` or ``("error", message)`` until the pipe closes
    or ``None`` arrives."""
    # Ctrl-C reaches the whole process group: the server decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        model = _load(spec)
        conn.send(("ready", model.labels))
    except Exception as err:  # reported to the parent, which fails start-up with it
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    while True:
        try:
            texts = conn.recv()
        except (EOFError, OSError):  # the server process is gone
            return
        if texts is None:
            return
        try:
            conn.send(("ok", model.classify(texts)))
        except Exception as err:
            conn.send(("error", "".join(traceback.format_exception_only(err)).strip()))


def _load(spec: WorkerSpec):
    import torch

    from honed.serve.engine import loading
    from honed.serve.engine.classifier import ClassifierModel

    torch.set_num_threads(spec.settings.torch_threads or 1)
    dtype = getattr(torch, spec.dtype)
    s = spec.settings
    parts = loading.load_classifier(
        spec.ref, spec.device, dtype, s.classify_quantization, s.classify_packing
    )
    return ClassifierModel(spec.ref.name, *parts, settings=spec.settings, device=spec.device)


class _Worker:
    """One child process and the parent's end of its pipe."""

    def __init__(self, spec: WorkerSpec) -> None:
        ctx = mp.get_context("spawn")  # fork would copy torch's thread pools and locks
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_worker_main, args=(child, spec), name=f"honed-{spec.ref.name}", daemon=True
        )
        self.proc.start()
        child.close()
        self.labels = self._wait_ready(spec.ref.name)

    def _wait_ready(self, name: str) -> list[str]:
        if not self.conn.poll(START_TIMEOUT_S):
            self.stop()
            raise ModelError(f"classifier worker for {name!r} did not start in time")
        try:
            kind, payload = self.conn.recv()
        except (EOFError, OSError):
            kind, payload = "error", f"exit code {self.proc.exitcode}"
        if kind != "ready":
            self.stop()
            raise ModelError(f"classifier worker for {name!r} failed to load: {payload}")
        return payload

    def call(self, texts: list[str]) -> tuple[list[dict], list[int]]:
        """Raises EOFError/OSError when the process died, RuntimeError when it raised."""
        self.conn.send(texts)
        kind, payload = self.conn.recv()
        if kind != "ok":
            raise RuntimeError(f"classifier worker: {payload}")
        return payload

    def stop(self, timeout: float = 10.0) -> None:
        with contextlib.suppress(OSError, ValueError):  # already dead or closed
            self.conn.send(None)
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout)
        self.conn.close()


class ClassifierProcesses:
    """``size`` worker processes serving one classifier; ``classify`` is called from batch
    threads (at most ``size`` at once, one idle worker each)."""

    def __init__(self, spec: WorkerSpec, size: int) -> None:
        if not spec.device.startswith("cpu"):
            raise ModelError(
                f"classify_processes runs classifiers in CPU worker processes, not on "
                f"{spec.device!r}: on a GPU one batch thread keeps the device busy; set "
                "classify_processes to 0"
            )
        self.spec = spec
        self._idle: queue.Queue[_Worker] = queue.Queue()
        workers: list[_Worker] = []
        try:
            for _ in range(size):
                workers.append(_Worker(spec))
        except Exception:
            for w in workers:
                w.stop()
            raise
        self.labels = workers[0].labels
        self._workers = workers  # every live worker, idle or busy
        for w in workers:
            self._idle.put(w)
        self.size = size
        self.restarts = 0

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def classify(self, texts: list[str]) -> tuple[list[dict], list[int]]:
        worker = self._idle.get()
        try:
            try:
                return worker.call(texts)
            except (EOFError, OSError):
                # The process died (killed, out of memory): replace it and run the batch
                # once more on the replacement, so a crash does not fail in-flight requests.
                worker = self._replace(worker)
            try:
                return worker.call(texts)
            except (EOFError, OSError) as err:  # died again on the same texts: give up
                worker = self._replace(worker)
                raise RuntimeError(f"classifier worker died twice on a batch ({err!r})") from None
        finally:
            self._idle.put(worker)

    def _replace(self, dead: _Worker) -> _Worker:
        log.error(
            "classifier worker %s (pid %s) died with exit code %s; starting a new one",
            self.spec.ref.name,
            dead.proc.pid,
            dead.proc.exitcode,
        )
        dead.stop(timeout=1.0)
        fresh = _Worker(self.spec)
        self._workers = [fresh if w is dead else w for w in self._workers]
        self.restarts += 1
        return fresh

    def close(self, timeout: float = 30.0) -> None:
        """Stop every worker: idle ones at once, busy ones when their batch ends; after
        ``timeout`` seconds the rest are killed (a hung worker must not hang shutdown)."""
        deadline = time.monotonic() + timeout
        for _ in range(self.size):
            try:
                worker = self._idle.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            worker.stop()
        for worker in self._workers:
            if worker.proc.is_alive():
                worker.proc.kill()
                worker.proc.join(5.0)

    def __getstate__(self) -> Any:  # pipes and processes belong to this process only
        raise TypeError("ClassifierProcesses cannot be pickled")
