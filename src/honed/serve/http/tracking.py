"""Per-request bookkeeping: metrics, and the optional request logger (`app.state.request_logger`).

The logger is any object with `.submit(record: dict)`; records carry id, model, adapter, route,
latency_ms, prompt_tokens, completion_tokens, input, output, label, score, status. A failing
logger never fails a request. A logger that also has `.submit_feedback(...)` receives the
implicit feedback signals (`regenerate`, `abandoned`; see honed.serve.http.implicit).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from fastapi import Request

from honed.serve.engine.generative import Engine
from honed.serve.http import implicit

log = logging.getLogger("honed.serve")


def labels_for(engine: Engine | None, model_id: str) -> tuple[str, str]:
    """(model, adapter) metric labels; unknown ids collapse to 'unknown'."""
    if engine is None:
        return "unknown", ""
    for mid, kind, parent in engine.ids():
        if mid == model_id:
            return (parent, mid) if kind == "adapter" and parent else (mid, "")
    return "unknown", ""


class Tracker:
    """Created when a request starts; `finish` records it exactly once."""

    def __init__(self, request: Request, route: str, model_id: str, prefix: str) -> None:
        self.state = request.app.state
        self.route = route
        self.model_id = model_id
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.model, self.adapter = labels_for(self.state.engine, model_id)
        self.started = time.perf_counter()
        self.done = False
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.records: list[dict[str, Any]] = []  # request-logger payloads (input/output/...)
        self.tokens_sent: int | None = None  # streamed content chunks delivered; None: no stream
        self._prompt_key: bytes | None = None
        self._memory: implicit.PromptMemory | None = None

    def watch_regenerate(self, caller: str, payload: Any) -> None:
        """Record a ``regenerate`` on the earlier request when ``caller`` sent the same
        ``payload`` (messages or prompt) to this model within the window; this request is
        remembered in turn once it answers (see ``finish``)."""
        self._memory = implicit.memory_for(self.state)
        if self._memory is None:
            return
        self._prompt_key = implicit.prompt_key(caller, self.route, self.model_id, payload)
        earlier = self._memory.previous(self._prompt_key)
        if earlier is not None:
            implicit.emit_signal(self.state, earlier, "regenerate", {"by_request_id": self.id})

    def abandon(self, usage: dict[str, int]) -> None:
        """The client left a stream before its final chunk: record the request (499, with the
        tokens generated so far) and an ``abandoned`` signal on it."""
        if self.done:
            return
        self.prompt_tokens = usage["prompt_tokens"]
        self.completion_tokens = usage["completion_tokens"]
        self.finish(499, "client_disconnected")
        detail = {"tokens_sent": self.tokens_sent or 0, "tokens_generated": self.completion_tokens}
        implicit.emit_signal(self.state, self.id, "abandoned", detail)

    def finish(self, status: int, error_type: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        elapsed = time.perf_counter() - self.started
        m = self.state.metrics
        labels = (self.route, self.model, self.adapter)
        m.requests.labels(*labels, str(status)).inc()
        m.latency.labels(*labels).observe(elapsed)
        if error_type is not None or status >= 400:
            m.errors.labels(*labels, error_type or str(status)).inc()
        m.tokens_in.labels(self.model, self.adapter).inc(self.prompt_tokens)
        m.tokens_out.labels(self.model, self.adapter).inc(self.completion_tokens)
        self._log(status, elapsed)
        # Only an answer the caller saw (complete, or partly streamed) can be regenerated; a
        # retry after an error or a timeout is not a judgement of an answer.
        answered = status == 200 or bool(self.tokens_sent)
        if self._memory is not None and self._prompt_key is not None and answered:
            self._memory.remember(self._prompt_key, self.id)

    def _log(self, status: int, elapsed: float) -> None:
        logger = getattr(self.state, "request_logger", None)
        if logger is None:
            return
        base = {
            "id": self.id,
            "model": self.model,
            "adapter": self.adapter or None,
            "route": self.route,
            "latency_ms": round(elapsed * 1000, 3),
            "status": status,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "input": None,
            "output": None,
            "label": None,
            "score": None,
        }
        for extra in self.records or [{}]:
            try:
                logger.submit({**base, **extra})
            except Exception:  # the logger is an add-on: it must never break serving
                log.exception("request logger failed")
