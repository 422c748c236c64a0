"""Full fine-tuning: every weight of the base trains."""

from __future__ import annotations

from typing import Any

from honed.train.config import MethodConfig


class FullFineTune:
    name = "full"
    is_adapter = False

    def load_kwargs(self, cfg: MethodConfig) -> dict[str, Any]:
        return {}

    def prepare(self, model: Any, cfg: MethodConfig, peft_task_type: str) -> Any:
        for param in model.parameters():
            param.requires_grad_(True)
        return model


METHOD = FullFineTune()
