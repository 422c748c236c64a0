"""The FastAPI application factory.

`create_app(settings, engine=None)`: with no engine, the models named in `settings` load in a
background task after start-up (so /healthz answers at once and /readyz turns 200 only after
the weights loaded and a real forward pass ran). Tests pass a ready-made Engine.

Extension points on `app.state` (see docs/serving.md):
  input_guards / output_guards   lists of callables (honed.serve.http.guards)
  guard_set                      the configured guards (settings.guards), built at start
  request_logger                 an object with .submit(record: dict), or None
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from honed import __version__
from honed.errors import HonedError
from honed.serve.engine.core import Engine
from honed.serve.engine.loading_plan import build_engine
from honed.serve.http.auth import AccessMiddleware, KeyStore
from honed.serve.http.errors import ERROR_RESPONSES, install_error_handlers
from honed.serve.http.guards import build_guard_set
from honed.serve.http.json_body import JsonBodyMiddleware
from honed.serve.http.limits_store import FeedbackQuota
from honed.serve.http.metrics import Metrics, version_label
from honed.serve.http.request_ids import RequestIdMiddleware
from honed.serve.http.routes import (
    adapters,
    canary,
    chat,
    classify,
    completions,
    health,
    models,
    sagemaker,
)
from honed.serve.settings import ServeSettings

log = logging.getLogger("honed.serve")


def create_app(settings: ServeSettings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    keys = KeyStore.from_settings(settings)
    keys.limiter.check_reachable()  # a shared store that does not answer: refuse to start
    if settings.insecure_dev and not keys.enabled:
        log.warning(
            "INSECURE DEV MODE (--insecure-dev): no API keys; every route, admin included, "
            "answers anyone who reaches %s:%s. Never expose this server.",
            settings.host,
            settings.port,
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_start(app, engine))
        app.state.start_task = task
        pruning = _retention_task(app)
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if pruning is not None:
                pruning.cancel()
                await asyncio.gather(pruning, return_exceptions=True)
            if app.state.engine is not None:
                await app.state.engine.stop()
            logger = app.state.request_logger
            if logger is not None and hasattr(logger, "close"):
                await asyncio.to_thread(logger.close)

    app = FastAPI(
        title="honed serve",
        version=__version__,
        description="OpenAI-compatible serving of honed specialists (adapters over one base).",
        lifespan=lifespan,
    )
    _init_state(app, settings, keys, engine)
    install_error_handlers(app)
    for module in (chat, completions, classify, models, health):
        app.include_router(module.router)
    if settings.enable_admin:
        app.include_router(adapters.router)
        app.include_router(canary.router)
    if settings.sagemaker:
        app.include_router(sagemaker.router)
    _include_feedback(app)
    app.add_middleware(JsonBodyMiddleware)
    app.add_middleware(
        AccessMiddleware,
        keys=keys,
        max_body=settings.max_body_bytes,
        retry_after=settings.retry_after_s,
    )
    app.add_middleware(RequestIdMiddleware)  # outermost: its header is on every response
    return app


def _init_state(app: FastAPI, settings: ServeSettings, keys: KeyStore, engine: Engine | None):
    app.state.settings = settings
    app.state.keys = keys
    app.state.limiter = keys.limiter
    # The feedback route's per-key quota (monitor.feedback) counts on the same storage.
    app.state.feedback_quota = partial(FeedbackQuota, keys.limiter)
    app.state.metrics = Metrics()
    app.state.engine = engine
    app.state.load_error = None
    app.state.started = int(time.time())
    app.state.input_guards = []
    app.state.output_guards = []
    app.state.guard_set = build_guard_set(settings.guards)  # loads guard models now
    app.state.request_logger = _request_logger(settings)


def _request_logger(settings: ServeSettings):
    """The monitor stage's non-blocking request logger (queue + batch-writer thread)."""
    if not settings.request_log:
        return None
    from honed.monitor.quality import pii_redactor
    from honed.monitor.requestlog import RequestLogger, identity

    redact = pii_redactor(settings.pii_ner_model) if settings.redact_pii else identity
    if settings.redact_pii:
        # Built now (Presidio, the NER model: seconds), not by the writer thread once traffic
        # has started, where it took CPU from the first requests.
        redact("warm-up: mail a@b.co or call 212-555-0199")
    return RequestLogger(settings.request_log_url, redact=redact)


def _retention_task(app: FastAPI) -> asyncio.Task | None:
    """The request log's retention (request_log_retention_days), pruned in the background."""
    settings: ServeSettings = app.state.settings
    logger = app.state.request_logger
    if settings.request_log_retention_days is None or getattr(logger, "engine", None) is None:
        return None
    from honed.monitor.requestlog import retention_loop

    return asyncio.create_task(retention_loop(logger.engine, settings.request_log_retention_days))


def _include_feedback(app: FastAPI) -> None:
    """The monitor stage's feedback routes, when that module is installed."""
    try:
        from honed.monitor.feedback import build_feedback_router
    except ImportError:
        return
    try:
        app.include_router(build_feedback_router(), responses=ERROR_RESPONSES)
    except TypeError as err:  # a different signature than expected: serve without it
        log.warning("feedback routes not mounted: %s", err)


async def _start(app: FastAPI, engine: Engine | None) -> None:
    settings: ServeSettings = app.state.settings
    try:
        if engine is None:
            engine = await asyncio.to_thread(build_engine, settings)
            app.state.engine = engine
        _wire_metrics(app.state.metrics, engine)
        await engine.start(warmup=settings.warmup)
        log.info("ready: %s", ", ".join(i for i, _, _ in engine.ids()))
    except asyncio.CancelledError:
        raise
    except HonedError as err:
        app.state.load_error = str(err)
        log.error("model loading failed: %s", err)
    except Exception as err:
        app.state.load_error = f"model loading failed ({type(err).__name__}); see server log"
        log.exception("model loading failed")


def _wire_metrics(metrics: Metrics, engine: Engine) -> None:
    def routed(model: str, arm: str, version: str) -> None:
        metrics.arm_requests.labels(model, arm, version).inc()

    engine.traffic.on_route = routed
    engine.on_load = lambda m: _wire_model(metrics, m)  # canary challengers
    for m in engine.models:
        _wire_model(metrics, m)


def _wire_model(metrics: Metrics, m) -> None:
    # Series per model object and version: a canary challenger (or a promotion's new primary)
    # gets its own, so the two arms' queues and batches are told apart.
    labels = (m.name, version_label(m))
    m.on_batch = metrics.batch_size.labels(*labels).observe
    metrics.queue_depth.labels(*labels).set_function(lambda m=m: m.queue_depth)
    if getattr(m, "processes", None) is not None:
        restarts = metrics.worker_restarts.labels(*labels)
        restarts.set_function(lambda m=m: m.processes.restarts if m.processes else 0)
