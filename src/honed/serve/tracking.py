"""Per-request bookkeeping: metrics, and the optional request logger (`app.state.request_logger`).

The logger is any object with `.submit(record: dict)`; records carry id, model, adapter, route,
latency_ms, prompt_tokens, completion_tokens, input, output, label, score, status. A failing
logger never fails a request.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from fastapi import Request

from honed.serve.engine import Engine

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
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.model, self.adapter = labels_for(self.state.engine, model_id)
        self.started = time.perf_counter()
        self.done = False
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.records: list[dict[str, Any]] = []  # request-logger payloads (input/output/...)

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
