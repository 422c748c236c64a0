"""The engine: every model of one server process, by API id, and how requests reach them
(a canary or shadow challenger beside a primary: honed.serve.engine.canary)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from honed.serve.engine.canary import HIDDEN, Arm, Traffic
from honed.serve.engine.classifier import ClassifierModel
from honed.serve.engine.errors import Conflict, InvalidRequest, NotFound
from honed.serve.engine.generative import GenerativeModel


class Engine:
    """All models of one server process, by API id."""

    def __init__(
        self,
        generator: GenerativeModel | None = None,
        classifiers: list[ClassifierModel] | None = None,
    ) -> None:
        self.generator = generator
        self.classifiers = {c.name: c for c in classifiers or []}
        self.ready = False
        self.failure: str | None = None
        self.traffic = Traffic()
        # Set by honed.serve.engine.loading_plan.build_engine (a hand-built engine has none):
        # (API id, ref) -> a classifier, not started; the refs served (alias following).
        self.loader: Callable[[str, str], ClassifierModel] | None = None
        self.refs: dict[str, str] = {}
        self.alias_poll_s = 0.0
        self.request_timeout_s = 120.0
        self.warmup = True
        # Called with each model loaded at run time (a challenger): metrics wiring.
        self.on_load: Callable[[Any], None] | None = None
        self.follower: Any = None
        self._follow_task: asyncio.Task | None = None

    @property
    def models(self) -> list[GenerativeModel | ClassifierModel]:
        return ([self.generator] if self.generator else []) + list(self.classifiers.values())

    def ids(self) -> list[tuple[str, str, str | None]]:
        return [entry for m in self.models for entry in m.ids() if not entry[0].endswith(HIDDEN)]

    def generator_for(self, model_id: str, route_key: str | None = None) -> GenerativeModel:
        """The arm that answers ``model_id`` (``route_key``: what a sticky canary splits on)."""
        gen = self.generator
        if gen is not None and gen.serves(model_id) and not model_id.endswith(HIDDEN):
            return self.traffic.route(model_id, gen, route_key)  # type: ignore[return-value]
        if model_id in self.classifiers:
            raise InvalidRequest(f"{model_id!r} is a classifier; use /v1/classify", param="model")
        raise NotFound("model", model_id)

    def classifier_for(self, model_id: str, route_key: str | None = None) -> ClassifierModel:
        """The arm that answers ``model_id`` (``route_key``: what a sticky canary splits on)."""
        if model_id in self.classifiers:
            clf = self.classifiers[model_id]
            return self.traffic.route(model_id, clf, route_key)  # type: ignore[return-value]
        if self.generator is not None and self.generator.serves(model_id):
            raise InvalidRequest(
                f"{model_id!r} generates text; use /v1/chat/completions", param="model"
            )
        raise NotFound("model", model_id)

    def adapter_host(self) -> GenerativeModel:
        """The generative base that adapters attach to."""
        if self.generator is None:
            raise Conflict(
                "this server has no generative base model to attach adapters to", code="no_base"
            )
        return self.generator

    def wire(self, model: Any) -> None:
        """Hook a model loaded at run time into what the start-up models have (metrics)."""
        if self.on_load is not None:
            self.on_load(model)

    async def start(self, warmup: bool = True) -> None:
        self.warmup = warmup
        for m in self.models:
            m.start()
        if warmup:
            for m in self.models:
                await m.batcher.call(m.warmup)
        self.ready = True
        self._follow_aliases()

    def _follow_aliases(self) -> None:
        from honed.serve.engine.loading_aliases import AliasFollower
        from honed.serve.engine.rollout import replace_primary

        follower = AliasFollower(self, self.alias_poll_s, replace_primary)
        if self.alias_poll_s > 0 and follower.aliases():
            self.follower = follower
            self._follow_task = asyncio.get_running_loop().create_task(follower.run())

    async def stop(self) -> None:
        self.ready = False
        if self._follow_task is not None:
            self._follow_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow_task
        await self.traffic.stop()
        for m in self.models:
            await m.stop()


__all__ = ["Arm", "Engine"]
