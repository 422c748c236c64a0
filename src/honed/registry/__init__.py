"""Tracking and model registry (MLflow). ``tracking_uri()`` is the entry for plain MLflow use."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from honed.registry.config import RegistryConfig


def tracking_uri(cfg: RegistryConfig | None = None) -> str:
    """The MLflow tracking URI honed uses (``$HONED_HOME/mlflow.db`` by default).

    It also makes honed's state-relative artifact scheme known to MLflow in this process, so
    stock MLflow loads registered versions wherever the state folder now lives::

        mlflow.set_tracking_uri(honed.registry.tracking_uri())
        mlflow.pyfunc.load_model("models:/financial-sentiment@champion")
    """
    from honed.registry.artifacts import register_scheme
    from honed.registry.store import tracking_uri as _tracking_uri

    register_scheme()
    return _tracking_uri(cfg)
