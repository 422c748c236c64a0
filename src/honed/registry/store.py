"""Tracking and model registry on MLflow.

Default: an embedded SQLite database and a file artifact store in the state folder (nothing to
start). A remote tracking server works through ``registry.tracking_uri`` or
``MLFLOW_TRACKING_URI``. Every registered version carries lineage tags, and its artifacts are a
copy of the run folder, so deleting ``runs/`` loses nothing that was registered.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from honed.errors import RegistryError
from honed.registry.config import RegistryConfig
from honed.state import default_artifact_root, default_tracking_uri

_REF = re.compile(
    r"^(?:models:/)?(?P<name>[A-Za-z0-9._-]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$"
)
_SKIP_ARTIFACTS = {"checkpoints"}


def _quiet() -> None:
    # MLflow's SQLite store logs every schema migration at INFO on first use.
    for name in ("alembic", "mlflow", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


def tracking_uri(cfg: RegistryConfig | None = None) -> str:
    if cfg is not None and cfg.tracking_uri:
        return cfg.tracking_uri
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


@dataclass(frozen=True)
class ModelRef:
    name: str
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        if self.alias:
            return f"{self.name}@{self.alias}"
        return f"{self.name}/{self.version}" if self.version else self.name


def parse_ref(ref: str) -> ModelRef:
    match = _REF.match(ref)
    if not match:
        raise RegistryError(
            f"{ref!r}: not a model folder, and not a registry reference "
            "(NAME@ALIAS such as fin-sentiment@champion, or NAME/VERSION)"
        )
    return ModelRef(match["name"], match["alias"], match["version"])


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)[:500]
    return flat


class Registry:
    """A thin, typed layer over MlflowClient for honed's runs and models."""

    def __init__(self, cfg: RegistryConfig | None = None):
        _quiet()
        import mlflow
        from mlflow import MlflowClient

        self.uri = tracking_uri(cfg)
        self._local = self.uri.startswith("sqlite:")
        mlflow.set_tracking_uri(self.uri)
        self._mlflow = mlflow
        self.client = MlflowClient(self.uri)

    # -- tracking ---------------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        existing = self.client.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        location = f"{default_artifact_root()}/{name}" if self._local else None
        return self.client.create_experiment(name, artifact_location=location)

    def log_run(
        self, experiment: str, run_name: str, folder: Path, params: dict, metrics: dict, tags: dict
    ) -> tuple[str, str]:
        """Log params, numeric metrics, tags and the run folder; returns (run_id, model URI)."""
        mlflow = self._mlflow
        with mlflow.start_run(
            experiment_id=self.experiment_id(experiment), run_name=run_name
        ) as run:
            mlflow.log_params(_flatten(params))
            mlflow.log_metrics(
                {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
            )
            mlflow.set_tags(tags)
            for entry in sorted(folder.iterdir()):
                if entry.name in _SKIP_ARTIFACTS:
                    continue
                if entry.is_dir():
                    mlflow.log_artifacts(str(entry), f"model/{entry.name}")
                else:
                    mlflow.log_artifact(str(entry), "model")
            return run.info.run_id, mlflow.get_artifact_uri("model")

    # -- registry ---------------------------------------------------------------------------
    def register(
        self, name: str, source: str, run_id: str, tags: dict[str, str], alias: str | None
    ) -> str:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name, description=f"honed specialist {name}")
        version = self.client.create_model_version(name, source=source, run_id=run_id, tags=tags)
        if alias:
            self.client.set_registered_model_alias(name, alias, version.version)
        return str(version.version)

    def get_version(self, ref: str | ModelRef) -> Any:
        from mlflow.exceptions import MlflowException

        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        try:
            if parsed.alias:
                return self.client.get_model_version_by_alias(parsed.name, parsed.alias)
            if parsed.version:
                return self.client.get_model_version(parsed.name, parsed.version)
            return self.latest(parsed.name)
        except MlflowException as err:
            raise RegistryError(
                f"{ref}: not found in the registry at {self.uri} ({_first(err)})"
            ) from None

    def latest(self, name: str) -> Any:
        versions = self.versions(name)
        if not versions:
            raise RegistryError(f"{name}: no registered versions")
        return versions[0]

    def versions(self, name: str) -> list[Any]:
        found = self.client.search_model_versions(f"name = '{name}'")
        return sorted(found, key=lambda v: -int(v.version))

    def models(self) -> list[Any]:
        return list(self.client.search_registered_models())

    def promote(
        self, name: str, version: str | None, alias: str = "champion"
    ) -> tuple[str, str | None]:
        """Point `alias` at `version` (default: the challenger); returns (new, previous)."""
        target = self.get_version(
            ModelRef(name, alias="challenger")
            if version is None
            else ModelRef(name, version=version)
        )
        from mlflow.exceptions import MlflowException

        try:
            previous: str | None = str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:  # no previous holder of the alias
            previous = None
        self.client.set_registered_model_alias(name, alias, target.version)
        if previous and previous != str(target.version):
            self.client.set_model_version_tag(
                name, target.version, f"replaced_{alias}", str(previous)
            )
        return str(target.version), previous

    def local_folder(self, version: Any) -> Path:
        """A local folder with the version's files (the artifact store path when local)."""
        path = self._mlflow.artifacts.download_artifacts(artifact_uri=version.source)
        return Path(path)

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.client.get_run(run_id).data.metrics) if run_id else {}


def _first(err: Exception) -> str:
    return str(err).splitlines()[0][:200]


def resolve_ref(ref: str, cfg: RegistryConfig | None = None) -> Path:
    """A model reference (folder, NAME@ALIAS or NAME/VERSION) -> a local model folder."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path.resolve()
    if "/" in ref and not re.match(r"^(models:/)?[A-Za-z0-9._-]+/\d+$", ref):
        raise RegistryError(f"{ref}: model folder not found")
    registry = Registry(cfg)
    return registry.local_folder(registry.get_version(ref))
