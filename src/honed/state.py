"""The state folder: where honed keeps what outlives a run.

Layout (default ``./.honed``, or ``$HONED_HOME``)::

    .honed/
      mlflow.db          MLflow tracking + model registry (SQLite, embedded)
      mlartifacts/       MLflow artifact store (registered model files; recorded relative to
                         this folder, so the folder can move: registry/artifacts.py)
      cache/models/      converted base models (e.g. GGUF -> safetensors)
"""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """The state folder, created on first use."""
    root = Path(os.environ.get("HONED_HOME", ".honed")).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_dir(kind: str) -> Path:
    path = state_dir() / "cache" / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_tracking_uri() -> str:
    return f"sqlite:///{state_dir() / 'mlflow.db'}"


def default_artifact_root() -> str:
    return (state_dir() / "mlartifacts").as_uri()
