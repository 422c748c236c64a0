"""Per-request bookkeeping: metrics, and the optional request logger (`app.state.request_logger`).

The logger is any object with `.submit(record: dict)`; records carry id, model, adapter,
version, digest, arm, route, latency_ms, prompt_tokens, completion_tokens, input, output, label,
score, status. A failing logger never fails a request. A logger that also has
`.record_model(...)` is told once per model version what answered (its labels, for checking
feedback later); one that also has `.submit_feedback(...)` receives the implicit feedback
signals below.

Request ids: a request's id is the client's `X-Request-Id` when it sent a usable one
(`client_request_id`), else `<prefix>-<24 hex>`; the tracker stores it on the request's state,
where honed.serve.http.request_ids puts it in the response's `X-Request-Id` header.

Implicit feedback the server sees: regenerated prompts and abandoned streams.

- ``regenerate``: the same caller sends the same prompt/messages to the same model again
  within ``settings.regenerate_window_s`` of an answer, and the repeat is SAMPLED
  (temperature > 0 and no seed) or carries ``X-Honed-Regenerate: 1``. The earlier answer was
  presumably unsatisfying, so the signal is recorded on the EARLIER request (with the repeat's
  id). A deterministic repeat (greedy, or a fixed seed) cannot give another answer: it is a
  retry or a batch job replaying prompts, not a judgement, and is never counted.
- ``abandoned``: a streamed response whose client left before the final chunk (recorded by
  the streaming code with the number of content chunks sent).

Clients cannot post these signals (``POST /v1/feedback`` takes explicit feedback only), and
each request's log row records the name of the API key that made it (``key_name``).

Signals go through the request logger's queue (``submit_feedback``), so recording one never
waits on the database; a logger without that method (a custom ``.submit`` object) gets none.
Only prompt hashes are kept in memory, in a bounded TTL/LRU map.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastapi import Request

from honed.serve.engine.core import Engine
from honed.serve.engine.loading import DIGEST_CHARS

log = logging.getLogger("honed.serve")

REQUEST_ID_HEADER = "X-Request-Id"
# A client's explicit "this request regenerates my previous one" (any of 1/true/yes).
REGENERATE_HEADER = "X-Honed-Regenerate"
# A client's id is kept when it is 1-64 printable ASCII characters without spaces (it fits the
# request log's id column and is safe in a header and a log line); otherwise a fresh one.
_CLIENT_ID = re.compile(r"[\x21-\x7e]{1,64}")


def client_request_id(value: str | None) -> str | None:
    """A client-sent X-Request-Id when usable (see _CLIENT_ID), else None."""
    return value if value and _CLIENT_ID.fullmatch(value) else None


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def identity_of(model: Any, model_id: str) -> tuple[str | None, str | None, str]:
    """(version, digest, arm) of the engine model that answers ``model_id``: an adapter id
    answers with its adapter slot's version and digest."""
    arm = getattr(model, "arm", None) or "primary"
    slot = (getattr(model, "adapters", None) or {}).get(model_id)
    if slot is not None:
        return getattr(slot, "version", None), slot.sha256[:DIGEST_CHARS], arm
    return getattr(model, "version", None), getattr(model, "digest", None), arm


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
        self.request_state = request.state  # per request: the id and whether it was logged
        self.route = route
        self.model_id = model_id
        client = getattr(request.state, "client_request_id", None)
        self.id = client or new_request_id(prefix)
        request.state.request_id = self.id
        self.model, self.adapter = labels_for(self.state.engine, model_id)
        self.version: str | None = None  # of the model that answered (answered_by)
        self.digest: str | None = None
        self.arm: str | None = None
        self.started = time.perf_counter()
        self.done = False
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.records: list[dict[str, Any]] = []  # request-logger payloads (input/output/...)
        self.tokens_sent: int | None = None  # streamed content chunks delivered; None: no stream
        self.guards: list[dict[str, Any]] = []  # configured guards' decisions (log row `guards`)
        self._prompt_key: bytes | None = None
        self._memory: PromptMemory | None = None
        key = getattr(request.state, "api_key", None)  # set by the access middleware
        self.key_name: str | None = getattr(key, "name", None)
        marker = request.headers.get(REGENERATE_HEADER, "")
        self.marked_regenerate = marker.strip().lower() in ("1", "true", "yes")

    def answered_by(self, model: Any, model_id: str) -> None:
        """Record which version answers: ``model`` is whatever the engine returned (any arm);
        the logger learns that version (with its labels) the first time it answers."""
        self.version, self.digest, self.arm = identity_of(model, model_id)
        key = (self.model, self.adapter, self.version, self.digest)
        seen = getattr(self.state, "versions_recorded", None)
        if seen is None:
            seen = self.state.versions_recorded = set()
        if key in seen:
            return
        seen.add(key)
        record = getattr(getattr(self.state, "request_logger", None), "record_model", None)
        if record is None:
            return
        kind = "adapter" if self.adapter else getattr(model, "kind", "generate")
        try:
            record(self.model, kind, self.version, self.digest, getattr(model, "labels", None))
        except Exception:  # the logger is an add-on: it must never break serving
            log.exception("request logger failed to record model %s", self.model)

    @property
    def version_label(self) -> str:
        """The metrics' `version` label: the registry version, else the weights digest (both
        come from the loaded models only, so the label's values stay few)."""
        return self.version or self.digest or ""

    def watch_regenerate(self, caller: str, payload: Any, sampled: bool = True) -> None:
        """Record a ``regenerate`` on the earlier request when ``caller`` sent the same
        ``payload`` (messages or prompt) to this model within the window and this repeat is
        ``sampled`` (see :func:`is_sampled`) or marked (``X-Honed-Regenerate``); this request
        is remembered in turn once it answers (see ``finish``)."""
        self._memory = memory_for(self.state)
        if self._memory is None:
            return
        self._prompt_key = prompt_key(caller, self.route, self.model_id, payload)
        if not (sampled or self.marked_regenerate):
            return  # a deterministic replay: remembered, never a regenerate itself
        earlier = self._memory.previous(self._prompt_key)
        if earlier is not None:
            emit_signal(self.state, earlier, "regenerate", {"by_request_id": self.id})

    def abandon(self, usage: dict[str, int]) -> None:
        """The client left a stream before its final chunk: record the request (499, with the
        tokens generated so far) and an ``abandoned`` signal on it."""
        if self.done:
            return
        self.prompt_tokens = usage["prompt_tokens"]
        self.completion_tokens = usage["completion_tokens"]
        self.finish(499, "client_disconnected")
        detail = {"tokens_sent": self.tokens_sent or 0, "tokens_generated": self.completion_tokens}
        emit_signal(self.state, self.id, "abandoned", detail)

    def finish(self, status: int, error_type: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.request_state.logged = True
        elapsed = time.perf_counter() - self.started
        m = self.state.metrics
        labels = (self.route, self.model, self.version_label, self.adapter)
        m.requests.labels(*labels, str(status)).inc()
        m.latency.labels(*labels).observe(elapsed)
        if error_type is not None or status >= 400:
            m.errors.labels(*labels, error_type or str(status)).inc()
        m.tokens_in.labels(*labels[1:]).inc(self.prompt_tokens)
        m.tokens_out.labels(*labels[1:]).inc(self.completion_tokens)
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
            "version": self.version,
            "digest": self.digest,
            "arm": self.arm,
            "key_name": self.key_name,
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
        if self.guards:
            base["guards"] = self.guards
        for extra in self.records or [{}]:
            try:
                logger.submit({**base, **extra})
            except Exception:  # the logger is an add-on: it must never break serving
                log.exception("request logger failed")


async def audit(event: str, key: Any, **fields: Any) -> None:
    """Record an admin action (done already) in the audit log, in a worker thread (the
    append takes a file lock and fsyncs); never raises (a failure is logged at ERROR)."""
    from honed.security.audit import record

    actor = f"key:{key.name}" if key is not None else "no-key (server without API keys)"
    await asyncio.to_thread(record, event, actor, **fields)


MAX_PROMPTS = 20_000  # ~2.5 MB of hashes and ids; the oldest are forgotten first


class PromptMemory:
    """Prompt hash -> (id of the request that last answered it, when), for ``window_s``
    seconds and at most ``max_entries`` hashes. Thread-safe."""

    def __init__(
        self,
        window_s: float,
        max_entries: int = MAX_PROMPTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_s <= 0 or max_entries < 1:
            raise ValueError("window_s must be > 0 and max_entries >= 1")
        self.window_s, self.max_entries, self.clock = window_s, max_entries, clock
        # Insertion order == order of the last remember(): expired entries sit at the front.
        self._items: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def previous(self, key: bytes) -> str | None:
        """The request id that answered ``key`` within the window, if any."""
        with self._lock:
            self._expire(self.clock())
            found = self._items.get(key)
        return found[0] if found else None

    def remember(self, key: bytes, request_id: str) -> None:
        with self._lock:
            now = self.clock()
            self._items[key] = (request_id, now)
            self._items.move_to_end(key)
            self._expire(now)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def _expire(self, now: float) -> None:
        while self._items:
            _, stamp = next(iter(self._items.values()))
            if now - stamp <= self.window_s:
                return
            self._items.popitem(last=False)


def prompt_key(caller: str, route: str, model: str, payload: Any) -> bytes:
    """A digest of who asked what of which model (the prompt itself is not kept)."""
    text = json.dumps([caller, route, model, payload], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).digest()


def is_sampled(body: Any) -> bool:
    """Whether repeating ``body`` can give another answer: temperature > 0 and no seed."""
    temperature = getattr(body, "temperature", None)
    return (temperature is None or temperature > 0) and getattr(body, "seed", None) is None


def caller_of(request: Request, key_name: str | None) -> str:
    """The API key's name, else the client address."""
    if key_name:
        return f"key:{key_name}"
    return f"addr:{request.client.host if request.client else 'unknown'}"


def memory_for(state: Any) -> PromptMemory | None:
    """The app's prompt memory, made on first use; None when regenerate tracking is off."""
    memory = getattr(state, "prompt_memory", None)
    if memory is None:
        settings = getattr(state, "settings", None)
        window = getattr(settings, "regenerate_window_s", 0)
        if not window:
            return None
        memory = state.prompt_memory = PromptMemory(window)
    return memory


def emit_signal(
    state: Any, request_id: str, signal: str, detail: dict[str, Any] | None = None
) -> bool:
    """Queue an implicit feedback signal on the app's request logger; never raises."""
    submit = getattr(getattr(state, "request_logger", None), "submit_feedback", None)
    if submit is None:
        return False
    try:
        return bool(submit(request_id, signal, detail=detail))
    except Exception:  # implicit feedback is an add-on: it must never break serving
        log.exception("implicit feedback %s on %s not recorded", signal, request_id)
        return False
