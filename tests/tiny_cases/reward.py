"""Tiny reward case: the dpo case's random 2-layer Llama and preference pairs, trained as a
reward model (one score head)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.tiny_cases.dpo import METHODS, build_pair_spec, helpers

TASK = "reward"
__all__ = ["METHODS", "TASK", "build_spec", "helpers"]


def build_spec(tmp_path: Path, method: str = "lora") -> Any:
    return build_pair_spec(tmp_path, method, TASK)
