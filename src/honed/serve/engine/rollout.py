"""Canary operations on a running engine: start a challenger, promote it, roll it back, and
replace a primary (a followed alias moved). Each runs under the model id's lock; requests
never take it. A swap changes routing in one step of the event loop, then waits for the
swapped-out model's requests to finish before stopping it (honed.serve.engine.canary)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from honed.errors import HonedError
from honed.serve.engine.canary import (
    HIDDEN,
    Canary,
    check_sticky,
    check_weight,
    conflict_running,
    no_canary,
)
from honed.serve.engine.errors import Conflict, InvalidRequest, NotFound

log = logging.getLogger("honed.serve")

DRAIN_GRACE_S = 5.0  # beyond the request deadline, before a swapped-out model is stopped anyway


async def open_canary(
    engine: Any,
    model_id: str,
    ref: str,
    weight: float | None = None,
    mode: str = "canary",
    sticky: str | None = None,
) -> Canary:
    """Load ``ref`` beside the primary of ``model_id`` and start sending it traffic."""
    weight = check_weight(weight, mode)
    check_sticky(sticky)
    traffic = engine.traffic
    async with traffic.lock(model_id):
        if model_id in traffic.canaries:
            raise conflict_running(model_id)
        if model_id in engine.classifiers:
            clf = await load_classifier(engine, model_id, ref, engine.classifiers[model_id].labels)
            canary = Canary(model_id, clf, ref, weight, mode, sticky)
            canary.version, canary.digest = clf.version, clf.digest
        else:
            canary = await _open_adapter(engine, model_id, ref, weight, mode, sticky)
        traffic.served[model_id] = Counter()  # requests per arm, from now on
        traffic.canaries[model_id] = canary
    log.info("canary %s: %s (%s, weight %.3f)", model_id, ref, mode, weight)
    return canary


async def _open_adapter(
    engine: Any, model_id: str, ref: str, weight: float, mode: str, sticky: str | None
) -> Canary:
    """A challenger LoRA adapter for an adapter id, loaded under a hidden id."""
    gen = engine.generator
    if gen is None or not gen.serves(model_id):
        raise NotFound("model", model_id)
    if model_id not in gen.adapters:
        raise Conflict(
            f"{model_id!r} is the generative base model: a canary needs a challenger for a "
            "classifier or a LoRA adapter id (two generative bases do not fit one server)",
            code="canary_unsupported",
            param="model",
        )
    hidden = f"{model_id}{HIDDEN}"
    try:
        path, version = await asyncio.to_thread(_resolve, ref)
    except HonedError as err:
        raise InvalidRequest(str(err), param="challenger", code="bad_challenger") from None
    slot = await gen.load_adapter(hidden, str(path), None)
    canary = Canary(model_id, gen, str(path), weight, mode, sticky, submit_as=hidden)
    canary.version = version
    canary.digest = slot.sha256[:16]
    return canary


async def promote(engine: Any, model_id: str) -> Canary:
    """The challenger becomes the primary; the old primary is unloaded once idle."""
    async with engine.traffic.lock(model_id):
        canary = engine.traffic.canaries.get(model_id)
        if canary is None:
            raise no_canary(model_id)
        await _promote_locked(engine, canary)
    log.info("canary %s promoted: %s", model_id, canary.ref)
    return canary


async def _promote_locked(engine: Any, canary: Canary) -> None:
    traffic = engine.traffic
    model_id = canary.model
    if canary.submit_as is None:
        old = engine.classifiers[model_id]
        # One step of the event loop: new requests now reach the challenger, as primary.
        engine.classifiers[model_id] = canary.challenger
        del traffic.canaries[model_id]
        await retire(engine, old)
        return
    gen = canary.challenger
    # The adapter id gets the challenger's weights (a hot swap that drains the old ones);
    # until then the canary arm keeps answering with the same weights under the hidden id.
    await gen.load_adapter(model_id, canary.ref, None)
    traffic.versions[model_id] = canary.version
    del traffic.canaries[model_id]
    await gen.unload_adapter(canary.submit_as)  # waits for the requests still using it


async def rollback(engine: Any, model_id: str) -> Canary:
    """Stop the canary: the challenger is unloaded once its last request finished."""
    async with engine.traffic.lock(model_id):
        canary = engine.traffic.canaries.pop(model_id, None)
        if canary is None:
            raise no_canary(model_id)
        if canary.submit_as is None:
            await retire(engine, canary.challenger)
        else:
            await canary.challenger.unload_adapter(canary.submit_as)
    log.info("canary %s rolled back: %s", model_id, canary.ref)
    return canary


async def replace_primary(engine: Any, model_id: str, source: str, version: str | None) -> bool:
    """Serve ``source`` (version ``version``) as the primary of ``model_id``; False when it
    already is. A running canary of that very version is promoted instead of loaded again."""
    traffic = engine.traffic
    async with traffic.lock(model_id):
        canary = traffic.canaries.get(model_id)
        if canary is not None and version is not None and canary.version == version:
            await _promote_locked(engine, canary)
            return True
        if model_id in engine.classifiers:
            old = engine.classifiers[model_id]
            if version is not None and getattr(old, "version", None) == version:
                return False
            new = await load_classifier(engine, model_id, source, None)
            new.version = version
            engine.classifiers[model_id] = new
            await retire(engine, old)
            return True
        gen = engine.generator
        if gen is not None and model_id in gen.adapters:
            if traffic.versions.get(model_id) == version:
                return False
            await gen.load_adapter(model_id, source, None)  # hot swap, drains the old weights
            traffic.versions[model_id] = version
            return True
    log.warning("alias of %s moved, but only classifiers and adapters follow it", model_id)
    return False


async def load_classifier(engine: Any, model_id: str, ref: str, labels: list[str] | None) -> Any:
    """A started (and warmed up) classifier from ``ref``; ``labels``: the label set it must
    have (the clients of a model id rely on it), None: any."""
    if engine.loader is None:
        raise Conflict("this server cannot load models at run time", code="no_loader")
    try:
        clf = await asyncio.to_thread(engine.loader, model_id, ref)
    except HonedError as err:
        raise InvalidRequest(str(err), param="challenger", code="bad_challenger") from None
    if labels is not None and list(clf.labels) != list(labels):
        await clf.stop()
        raise InvalidRequest(
            f"{ref!r} has labels {list(clf.labels)}, the served model {list(labels)}; "
            "a challenger must answer with the same labels",
            param="challenger",
            code="labels_differ",
        )
    engine.wire(clf)
    clf.start()
    if engine.warmup:
        await clf.batcher.call(clf.warmup)
    return clf


async def retire(engine: Any, model: Any) -> None:
    """Stop a model already out of routing, after its requests (and shadow copies) finished."""
    timeout = engine.request_timeout_s + DRAIN_GRACE_S
    await engine.traffic.drained(model, timeout)
    if model.batcher is not None:
        await model.batcher.stop()
        # A batch already running (its requests gone) finishes before worker processes close.
        await asyncio.to_thread(model.batcher.executor.shutdown, True)
    await model.stop()


def state(engine: Any) -> list[dict[str, Any]]:
    """Per model id: the primary, the canary (if any) and requests routed per arm."""
    traffic = engine.traffic
    out = []
    for model_id, kind, (version, digest) in _served(engine):
        served = traffic.served.get(model_id, {})
        canary = traffic.canaries.get(model_id)
        out.append(
            {
                "model": model_id,
                "kind": kind,
                "primary": {
                    "version": version,
                    "digest": digest,
                    "requests": served.get("primary", 0),
                },
                "canary": None if canary is None else _canary_state(canary, served),
            }
        )
    return out


def _served(engine: Any) -> list[tuple[str, str, tuple[str | None, str | None]]]:
    """(model id, kind, (version, digest)) of the classifiers and adapter ids."""
    rows = [
        (name, "classify", (getattr(clf, "version", None), getattr(clf, "digest", None)))
        for name, clf in engine.classifiers.items()
    ]
    gen = engine.generator
    if gen is not None:
        for mid, kind, _ in engine.ids():
            if kind == "adapter" and mid in gen.adapters:
                rows.append((mid, kind, engine.traffic.adapter_identity(gen, mid)))
    return rows


def _canary_state(canary: Canary, served: Any) -> dict[str, Any]:
    return {
        "challenger": canary.ref,
        "version": canary.version,
        "digest": canary.digest,
        "mode": canary.mode,
        "weight": canary.weight,
        "sticky": canary.sticky,
        "started_at": canary.started_at.isoformat(),
        "requests": served.get("canary", 0),
        "shadow_requests": served.get("shadow", 0),
        "shadow_errors": canary.shadow_errors,
        "shadow_dropped": canary.shadow_dropped,
    }


def _resolve(ref: str) -> tuple[Path, str | None]:
    """(folder, registry version) of a challenger ref."""
    from honed.serve.engine.loading import resolve

    return resolve(ref)
