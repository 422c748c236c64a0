"""Registry stage config: experiment tracking and model registration (MLflow)."""

from __future__ import annotations

from pydantic import Field

from honed.config_base import StrictModel


class RegistryConfig(StrictModel):
    """Where runs are tracked and models registered."""

    enabled: bool = Field(True, description="Register the trained model with its lineage.")
    model_name: str | None = Field(
        None, description="Registered model name; default: the spec's name."
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI. Default: a SQLite file in the state folder "
        "(embedded, no server). A remote server (http://...) works the same way.",
    )
    experiment: str | None = Field(None, description="MLflow experiment; default: the spec's name.")
    alias_on_register: str | None = Field(
        "challenger", description="Alias set on each newly registered version."
    )
