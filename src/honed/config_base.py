"""Shared base for every component config."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Configs reject unknown fields (a typo must not be silently ignored) and are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
