"""Adaptation methods, one module each (PEFT's folder-per-method idea).

A method module in this folder defines ``METHOD``, an object with the ``Method`` interface.
Modules are discovered by file name, so adding a method (QLoRA, DoRA, ...) is adding one file.
Method modules import heavy libraries inside functions, so listing methods stays cheap.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

from honed.plugins import load_plugin, module_names

if TYPE_CHECKING:
    from honed.train.config import MethodConfig


class Method(Protocol):
    """How a base model's weights are adapted."""

    name: str
    #: True when training saves an adapter on top of the base rather than full weights.
    is_adapter: bool

    def load_kwargs(self, cfg: MethodConfig) -> dict[str, Any]:
        """Extra ``from_pretrained`` kwargs for the base (e.g. a quantization config)."""
        ...

    def prepare(self, model: Any, cfg: MethodConfig, peft_task_type: str) -> Any:
        """Wrap or freeze the loaded base for training; returns the model to train.

        ``peft_task_type`` is peft's TaskType name: SEQ_CLS, CAUSAL_LM, SEQ_2_SEQ_LM, ...
        """
        ...


@cache
def available_methods() -> tuple[str, ...]:
    return module_names(__path__)


def get_method(name: str) -> Method:
    return load_plugin(__name__, available_methods(), name, "METHOD", "method")
