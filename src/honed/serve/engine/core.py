"""The engine: every model of one server process, by API id."""

from __future__ import annotations

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

    @property
    def models(self) -> list[GenerativeModel | ClassifierModel]:
        return ([self.generator] if self.generator else []) + list(self.classifiers.values())

    def ids(self) -> list[tuple[str, str, str | None]]:
        return [entry for m in self.models for entry in m.ids()]

    def generator_for(self, model_id: str) -> GenerativeModel:
        if self.generator is not None and self.generator.serves(model_id):
            return self.generator
        if model_id in self.classifiers:
            raise InvalidRequest(f"{model_id!r} is a classifier; use /v1/classify", param="model")
        raise NotFound("model", model_id)

    def classifier_for(self, model_id: str) -> ClassifierModel:
        if model_id in self.classifiers:
            return self.classifiers[model_id]
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

    async def start(self, warmup: bool = True) -> None:
        for m in self.models:
            m.start()
        if warmup:
            for m in self.models:
                await m.batcher.call(m.warmup)
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        for m in self.models:
            await m.stop()
