"""Implicit feedback the server sees: regenerated prompts and abandoned streams.

- ``regenerate``: the same caller sends the same prompt/messages to the same model again
  within ``settings.regenerate_window_s`` of an answer. The earlier answer was presumably
  unsatisfying, so the signal is recorded on the EARLIER request (with the repeat's id).
- ``abandoned``: a streamed response whose client left before the final chunk (recorded by
  the streaming code with the number of content chunks sent).

Signals go through the request logger's queue (``submit_feedback``), so recording one never
waits on the database; a logger without that method (a custom ``.submit`` object) gets none.
Only prompt hashes are kept in memory, in a bounded TTL/LRU map.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastapi import Request

log = logging.getLogger("honed.serve")

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
