"""Training tasks, one module each: what data looks like, which model head, which trainer,
which metrics. A task module in this folder defines ``TASK`` with the ``Task`` interface and is
discovered by file name. Task modules import heavy libraries inside functions.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

from honed.plugins import load_plugin, module_names

if TYPE_CHECKING:
    from honed.data.dataset import SplitData
    from honed.models.resolve import ResolvedModel
    from honed.paths import RunPaths
    from honed.spec import RunSpec


class Task(Protocol):
    name: str
    #: peft TaskType name used when the method wraps the model (SEQ_CLS, CAUSAL_LM, ...).
    peft_task_type: str

    def prepare_data(self, spec: RunSpec) -> SplitData:
        """Load, clean and split the spec's data."""
        ...

    # Optional: ``frozen_eval = True`` when ``prepare_data(spec, frozen=EvalSet)`` takes a
    # frozen evaluation set as its test split (classification); other tasks always split.
    # Optional: ``data_fields(spec, first_row) -> {data field: spec setting naming it}``, the
    # fields every row needs; ``honed validate`` checks a sample of the data has them.

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
    return module_names(__path__)


def get_task(name: str) -> Task:
    return load_plugin(__name__, available_tasks(), name, "TASK", "task")
