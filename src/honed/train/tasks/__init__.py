"""Training tasks, one module each: what data looks like, which model head, which trainer,
which metrics. A task module in this folder defines ``TASK`` with the ``Task`` interface and is
discovered by file name. Task modules import heavy libraries inside functions.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from honed.data.dataset import SplitData
    from honed.models.resolve import ResolvedModel
    from honed.pipeline.paths import RunPaths
    from honed.spec import RunSpec


class Task(Protocol):
    name: str
    #: peft TaskType name used when the method wraps the model (SEQ_CLS, CAUSAL_LM, ...).
    peft_task_type: str

    def prepare_data(self, spec: RunSpec) -> SplitData:
        """Load, clean and split the spec's data."""
        ...

    def train(
        self, spec: RunSpec, data: SplitData, base: ResolvedModel, paths: RunPaths, resume: bool
    ) -> dict[str, Any]:
        """Train and save the best model into ``paths.model_dir``; returns training metrics."""
        ...

    def evaluate(
        self, spec: RunSpec, data: SplitData, base: ResolvedModel, paths: RunPaths
    ) -> dict[str, Any]:
        """Evaluate the saved model on the test split; returns the metrics written to
        ``metrics.json`` (flat ``test_*`` numbers plus nested details). An optional
        ``reference_outputs: {predictions, confidences}`` entry is moved into the model's
        reference profile for drift checks instead."""
        ...


@cache
def available_tasks() -> tuple[str, ...]:
    return tuple(
        sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    )


def get_task(name: str) -> Task:
    if name not in available_tasks():
        raise KeyError(f"unknown task {name!r}; known: {', '.join(available_tasks())}")
    return importlib.import_module(f"{__name__}.{name}").TASK
