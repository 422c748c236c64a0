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
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` + ".lock" (fcntl, so it holds across processes; no
    locking where fcntl does not exist). For append-only files written by several processes
    (the registry history, the audit log)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: single writer assumed
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
