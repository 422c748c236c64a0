"""Tiny random models for unit tests (serve, deploy), built once per test session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tests.fixtures.tiny_models import build_tiny_adapters, build_tiny_classifier, build_tiny_llm

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Any]:
    root: Path = tmp_path_factory.mktemp("serve-models")
    base = build_tiny_llm(root / "base")
    adapters = build_tiny_adapters(base, root / "adapters", k=3)
    clf = build_tiny_classifier(root / "clf")
    return {"base": base, "adapters": adapters, "clf": clf, "root": root}
