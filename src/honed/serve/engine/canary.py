"""Canary and shadow serving: one API id answered by two versions at once.

A model id has a primary (what `honed serve` loaded) and, while a canary runs, a challenger:

- ``mode="canary"``: a fraction ``weight`` of the requests is answered by the challenger. The
  split is random per request, or sticky (``sticky="api_key"`` or ``"header:X-User-Id"``): a
  stable hash of the caller's key (or header value) puts each caller in one arm, and the share
  of callers in the canary arm is ``weight`` (a hash below ``weight``, so raising the weight
  only moves callers towards the challenger).
- ``mode="shadow"``: every answer comes from the primary; a fraction ``weight`` of the requests
  is also sent to the challenger once the primary answered. The challenger's answer goes to the
  request log with ``arm="shadow"`` and the request's id, never to the client, and a failing
  or slow challenger never affects the client.

`Engine.classifier_for` / `generator_for` return an `Arm`: the model that answers, with the
``arm`` ("primary" | "canary"), ``version`` and ``digest`` the request log records. An Arm
counts the jobs its model has in flight, so a swap (promotion, rollback, a followed alias)
removes a model from routing first and stops it only after its last request finished: no
request fails during a swap, and each finishes on the arm it started on.

Generative models: a canary is a challenger LoRA adapter for an adapter id (loaded beside the
current one under a hidden id); the base model itself cannot have a challenger (409).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from honed.serve.engine.errors import Conflict, InvalidRequest, NotFound

log = logging.getLogger("honed.serve")

STICKY = re.compile(r"^(api_key|header:[A-Za-z0-9][A-Za-z0-9_-]{0,63})$")
HIDDEN = "~canary"  # suffix of a challenger adapter's internal API id (never routable)
MODES = ("canary", "shadow")


def split_point(model: str, key: str) -> float:
    """A stable number in [0, 1) for (model, caller): the same caller always lands on the same
    side of a weight, and callers spread uniformly (sha256, not Python's salted hash)."""
    digest = hashlib.sha256(f"{model}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def check_sticky(sticky: str | None) -> str | None:
    if sticky is not None and not STICKY.match(sticky):
        raise InvalidRequest(
            f"sticky {sticky[:80]!r}: use null, 'api_key' or 'header:NAME' (e.g. header:X-User-Id)",
            param="sticky",
        )
    return sticky


@dataclass(eq=False)
class Canary:
    """The challenger of one model id and how traffic reaches it."""

    model: str
    challenger: Any  # a ClassifierModel, or the GenerativeModel holding the challenger adapter
    ref: str  # what the challenger was loaded from (registry ref or folder)
    weight: float
    mode: str = "canary"
    sticky: str | None = None
    submit_as: str | None = None  # generative: the hidden adapter id the challenger answers as
    version: str | None = None
    digest: str | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    shadow_errors: int = 0
    shadow_dropped: int = 0  # copies not sent: the challenger's queue was full

    def pick(self, route_key: str | None) -> str:
        """'primary' or 'canary' for one request (shadow mode: always 'primary')."""
        if self.mode == "shadow" or self.weight <= 0:
            return "primary"
        point = random.random() if route_key is None else split_point(self.model, route_key)
        return "canary" if point < self.weight else "primary"

    def mirrors(self, route_key: str | None) -> bool:
        """Shadow mode: whether this request is copied to the challenger."""
        if self.mode != "shadow" or self.weight <= 0:
            return False
        point = random.random() if route_key is None else split_point(self.model, route_key)
        return point < self.weight


class Arm:
    """The model that answers one request, as the pipeline sees it: every attribute is the
    model's, except ``arm``/``version``/``digest`` (fixed when the request was routed) and
    ``submit``/``submit_all`` (counted in flight; a challenger adapter answers as its hidden
    id)."""

    def __init__(
        self,
        model: Any,
        arm: str,
        traffic: Traffic,
        version: str | None = None,
        digest: str | None = None,
        submit_as: str | None = None,
    ) -> None:
        self._model = model
        self._traffic = traffic
        self._submit_as = submit_as
        self.arm = arm
        self.version = version if version is not None else getattr(model, "version", None)
        self.digest = digest if digest is not None else getattr(model, "digest", None)

    def __getattr__(self, name: str) -> Any:  # only called for names not set above
        return getattr(self._model, name)

    @property
    def model_object(self) -> Any:
        return self._model

    def submit(self, texts: list[str]) -> Any:
        """A classifier job, counted until its future is done."""
        job = self._model.submit(texts)
        self._traffic.hold(self._model, job.future)
        return job

    def submit_all(self, prompts: list[list[int]], model_id: str, params: Any) -> list[Any]:
        # The generative model counts its adapters' jobs itself (its hot swap drains them).
        return self._model.submit_all(prompts, self._submit_as or model_id, params)


class Traffic:
    """Routing state of one engine: the running canaries, jobs in flight per model object,
    requests per arm, and the shadow copies in progress."""

    def __init__(self) -> None:
        self.canaries: dict[str, Canary] = {}
        # Registry versions of adapter ids (a generative model holds several; classifiers
        # carry their own `version`).
        self.versions: dict[str, str | None] = {}
        self.served: dict[str, Counter[str]] = {}  # model id -> arm -> requests routed
        self.locks: dict[str, asyncio.Lock] = {}
        # Called (model id, arm, version) for every routed request: the Prometheus counter.
        self.on_route: Callable[[str, str, str], None] | None = None
        self._inflight: Counter[int] = Counter()
        self._idle: dict[int, asyncio.Event] = {}
        self._shadows: set[asyncio.Task] = set()

    def lock(self, model_id: str) -> asyncio.Lock:
        """One lock per model id: canary start, promotion, rollback and alias swaps of one
        model run one at a time (requests never take it)."""
        return self.locks.setdefault(model_id, asyncio.Lock())

    # -- routing -------------------------------------------------------------------------
    def route(self, model_id: str, primary: Any, route_key: str | None) -> Arm:
        canary = self.canaries.get(model_id)
        arm = "primary" if canary is None else canary.pick(route_key)
        if arm == "canary":
            assert canary is not None
            chosen = Arm(
                canary.challenger, "canary", self, canary.version, canary.digest, canary.submit_as
            )
        else:
            chosen = Arm(primary, "primary", self, *self.adapter_identity(primary, model_id))
        self.count(model_id, arm, chosen.version)
        return chosen

    def adapter_identity(self, primary: Any, model_id: str) -> tuple[str | None, str | None]:
        """(version, digest) of an adapter id on a generative model (None: the model's own)."""
        slot = (getattr(primary, "adapters", None) or {}).get(model_id)
        if slot is None:
            return None, None
        return self.versions.get(model_id), slot.sha256[:16]

    def count(self, model_id: str, arm: str, version: str | None) -> None:
        self.served.setdefault(model_id, Counter())[arm] += 1
        if self.on_route is not None:
            self.on_route(model_id, arm, version or "")

    # -- in-flight accounting ------------------------------------------------------------
    def hold(self, model: Any, future: asyncio.Future) -> None:
        key = id(model)
        self._inflight[key] += 1
        future.add_done_callback(lambda _f: self._release(key))

    def _release(self, key: int) -> None:
        self._inflight[key] -= 1
        if self._inflight[key] <= 0:
            del self._inflight[key]
            if key in self._idle:
                self._idle.pop(key).set()

    def in_flight(self, model: Any) -> int:
        return self._inflight.get(id(model), 0)

    async def drained(self, model: Any, timeout: float) -> bool:
        """Wait until ``model`` (already out of routing) has no job in flight; False when
        ``timeout`` passed first (its jobs have deadlines, so this is a safety net)."""
        key = id(model)
        if self._inflight.get(key, 0) <= 0:
            return True
        event = self._idle.setdefault(key, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            left = self._inflight[key]
            log.warning("a swapped-out model still had %d jobs after %.0fs", left, timeout)
            return False
        return True

    # -- shadow copies -------------------------------------------------------------------
    def shadow(
        self,
        model_id: str,
        route: str,
        work: Any,
        request_id: str,
        inputs: Iterable[str],
        logger: Any,
        route_key: str | None = None,
    ) -> bool:
        """Send a copy of an answered request to the challenger of ``model_id`` when a shadow
        runs; its answer goes to ``logger`` (``.submit(dict)``) with arm 'shadow' and the same
        ``request_id``. Never raises, never waits: True when a copy was sent."""
        canary = self.canaries.get(model_id)
        if canary is None or not canary.mirrors(route_key):
            return False
        try:
            copy = _ShadowCopy(self, canary, route, request_id, list(inputs), logger)
            sent = copy.send(work)
        except Exception:  # the shadow is an add-on: it must never break serving
            log.exception("shadow copy of %s not sent", request_id)
            canary.shadow_errors += 1
            return False
        if sent is not None:
            self._shadows.add(sent)
            sent.add_done_callback(self._shadows.discard)
        return sent is not None

    async def stop(self) -> None:
        for task in list(self._shadows):
            task.cancel()
        await asyncio.gather(*self._shadows, return_exceptions=True)
        for canary in list(self.canaries.values()):
            if canary.submit_as is None:
                await canary.challenger.stop()
        self.canaries.clear()


class _ShadowCopy:
    """One request's copy to a challenger: submitted at once (so a swap that follows waits for
    it), awaited in a task, logged when it answers or fails."""

    def __init__(
        self,
        traffic: Traffic,
        canary: Canary,
        route: str,
        request_id: str,
        inputs: list[str],
        logger: Any,
    ) -> None:
        self.traffic, self.canary, self.route = traffic, canary, route
        self.request_id, self.inputs, self.logger = request_id, inputs, logger
        self.started = time.perf_counter()

    def send(self, work: Any) -> asyncio.Task | None:
        from honed.serve.engine.errors import QueueFull

        challenger = self.canary.challenger
        try:
            if self.canary.submit_as is None:  # a classifier job: the same texts
                job = challenger.submit(list(work.texts))
                self.traffic.hold(challenger, job.future)
                waiter = self._classified(job)
            else:  # generation jobs: the same prompt tokens and decoding settings
                jobs = challenger.submit_all(
                    [j.prompt_ids for j in work], self.canary.submit_as, work[0].params
                )
                waiter = self._generated(jobs)
        except QueueFull:
            self.canary.shadow_dropped += 1
            return None
        self.traffic.count(self.canary.model, "shadow", self.canary.version)
        return asyncio.get_running_loop().create_task(waiter)

    def _timeout(self) -> float:
        return self.canary.challenger.settings.request_timeout_s

    async def _classified(self, job: Any) -> None:
        try:
            results = await asyncio.wait_for(job.future, self._timeout())
        except Exception as err:
            self._failed(err)
            return
        rows = [
            {"input": t, "output": r["label"], "label": r["label"], "score": r["score"]}
            for t, r in zip(job.texts, results, strict=True)
        ]
        self._log(rows, 200, prompt_tokens=job.prompt_tokens)

    async def _generated(self, jobs: list[Any]) -> None:
        try:
            await asyncio.wait_for(asyncio.gather(*(_drain(j) for j in jobs)), self._timeout())
        except Exception as err:
            for j in jobs:
                j.cancel()
            self._failed(err)
            return
        n = jobs[0].params.n
        texts = [row.text for j in jobs for row in j.rows]
        rows = [{"input": t, "output": texts[p * n]} for p, t in enumerate(self.inputs)]
        self._log(
            rows,
            200,
            prompt_tokens=sum(len(j.prompt_ids) for j in jobs),
            completion_tokens=sum(j.completion_tokens for j in jobs),
        )

    def _failed(self, err: BaseException) -> None:
        if isinstance(err, asyncio.CancelledError):
            raise err
        self.canary.shadow_errors += 1
        log.warning("shadow copy of %s failed: %s", self.request_id, type(err).__name__)
        code = 504 if isinstance(err, TimeoutError) else 500
        self._log([{"input": t} for t in self.inputs] or [{}], code, error=type(err).__name__)

    def _log(self, rows: list[dict], status: int, **extra: Any) -> None:
        if self.logger is None:
            return
        base = {
            "id": self.request_id,
            "model": self.canary.model,
            "adapter": None,
            "route": self.route,
            "latency_ms": round((time.perf_counter() - self.started) * 1000, 3),
            "status": status,
            "version": self.canary.version,
            "digest": self.canary.digest,
            "arm": "shadow",
            **extra,
        }
        if self.canary.submit_as is not None:
            base["adapter"] = self.canary.model
        for i, row in enumerate(rows):
            try:
                # `item` explicit: the primary's rows under the same id are numbered already.
                self.logger.submit({**base, **row, "item": i})
            except Exception:
                log.exception("request logger failed (shadow)")


async def _drain(job: Any) -> None:
    while True:
        event = await job.events.get()
        if event[0] == "done":
            return
        if event[0] == "error":
            raise RuntimeError(str(event[1]) if len(event) > 1 else "generation failed")


def route_key(traffic: Traffic, model_id: str, caller: str | None, headers: Any) -> str | None:
    """What a sticky canary of ``model_id`` splits on: the caller (API key name, else client
    address) or a header's value; None (a random split) without a sticky canary or when the
    header is missing."""
    canary = traffic.canaries.get(model_id)
    if canary is None or canary.sticky is None:
        return None
    if canary.sticky == "api_key":
        return caller
    value = headers.get(canary.sticky.removeprefix("header:")) if headers is not None else None
    return value or None


def check_weight(weight: float | None, mode: str) -> float:
    if mode not in MODES:
        raise InvalidRequest(f"mode {mode!r}: use 'canary' or 'shadow'", param="mode")
    if weight is None:
        return 1.0 if mode == "shadow" else 0.1
    if not 0.0 <= weight <= 1.0:
        raise InvalidRequest(f"weight {weight}: must be between 0 and 1", param="weight")
    return float(weight)


def conflict_running(model_id: str) -> Conflict:
    return Conflict(
        f"{model_id!r} already has a canary; promote it or roll it back first",
        code="canary_running",
        param="model",
    )


def no_canary(model_id: str) -> NotFound:
    err = NotFound("canary for model", model_id)
    err.code = "no_canary"
    return err
