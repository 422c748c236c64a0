"""Tracking and model registry on MLflow.

Default: an embedded SQLite database and a file artifact store in the state folder (nothing to
start). A remote tracking server works through ``registry.tracking_uri`` or
``MLFLOW_TRACKING_URI``. Every registered version is an MLflow model (``registry/pyfunc.py``)
holding a copy of the run folder, with lineage tags, the training curves, every metric and the
data splits as dataset inputs, so deleting ``runs/`` loses nothing that was registered.

Artifact locations in the embedded store are relative to the state folder
(``registry/artifacts.py``): a moved or mounted ``.honed`` folder keeps working.
MLflow's exceptions become ``RegistryError`` messages that name the reference and what to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from honed.errors import RegistryError
from honed.registry.config import RegistryConfig
from honed.security.supply import (
    MANIFEST_TAG,
    SBOM_FILE,
    model_components,
    model_manifest,
    verify_manifest,
    write_sbom,
)
from honed.state import default_tracking_uri

_REF = re.compile(
    r"^(?:models:/)?(?P<name>[A-Za-z0-9._-]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$"
)
_SKIP_ARTIFACTS = {"checkpoints"}
_METRIC_KEY = re.compile(r"[^A-Za-z0-9_\-. :/]")
_BATCH = 1000  # MLflow's limit of metrics per log_batch call
_UNVERIFIED: set[str] = set()  # versions already warned about (once per process)
log = logging.getLogger("honed.registry")


def _quiet() -> None:
    # MLflow's SQLite store logs every schema migration at INFO on first use; logging a model
    # warns that the python_model is pickled (honed's pickle is a reference to its own class).
    for name in ("alembic", "mlflow", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


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


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def numeric_metrics(data: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number in a nested dict, keyed ``a.b.c`` (lists and text are left out)."""
    flat: dict[str, float] = {}
    for key, value in data.items():
        name = _METRIC_KEY.sub("_", f"{prefix}{key}")
        if isinstance(value, dict):
            flat.update(numeric_metrics(value, f"{name}."))
        elif _is_number(value):
            flat[name] = float(value)
    return flat


def history_metrics(history: list[dict[str, Any]]) -> list[Any]:
    """The Trainer's ``log_history`` (one dict per logging step) as MLflow metric points."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    points = []
    for entry in history:
        step = int(entry.get("step", 0))
        for key, value in numeric_metrics(entry).items():
            if key != "step":
                points.append(Metric(key, value, now, step))
    return points


def _rows_frame(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    frame = pd.DataFrame([{k: v for k, v in row.items() if k != "line"} for row in rows])
    for column in frame.columns:  # chat messages and the like: JSON text, so MLflow can type it
        if frame[column].map(lambda v: isinstance(v, dict | list)).any():
            frame[column] = frame[column].map(lambda v: json.dumps(v, default=str))
    return frame


def dataset_inputs(splits: dict[str, list[dict[str, Any]]], source: str, name: str) -> list:
    """One MLflow dataset per split, named ``NAME-SPLIT``, digest = hash of the split's rows."""
    import mlflow.data

    inputs = []
    for split, rows in splits.items():
        frame = _rows_frame(rows)
        sha = hashlib.sha256(frame.to_json(orient="records").encode()).hexdigest()
        kwargs = {"name": f"{name}-{split}", "digest": sha[:32]}
        if "label" in frame.columns:
            kwargs["targets"] = "label"
        try:
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": a path
                warnings.simplefilter("ignore", UserWarning)
                dataset = mlflow.data.from_pandas(frame, source=source, **kwargs)
        except Exception:  # a source MLflow has no resolver for (hub ids): named in the tags
            dataset = mlflow.data.from_pandas(frame, **kwargs)
        inputs.append((dataset, split, {"source": source, "sha256": sha}))
    return inputs


def _stage(folder: Path, staged: Path) -> None:
    """The run folder without checkpoints; hard links where possible (weights can be GBs)."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(
        folder, staged, ignore=shutil.ignore_patterns(*_SKIP_ARTIFACTS), copy_function=link_or_copy
    )


def _explain(subject: str, uri: str, err: Exception) -> str:
    text = str(err)
    if "API request to" in text and "failed with exception" in text:
        return (
            f"{subject}: the tracking server at {uri} is unreachable; start it, or point "
            "registry.tracking_uri / MLFLOW_TRACKING_URI at a reachable one"
        )
    if getattr(err, "error_code", "") == "RESOURCE_DOES_NOT_EXIST" or "not found" in text:
        return (
            f"{subject}: not found in the registry at {uri} ({_first(err)}); "
            "`honed models list` shows what is registered"
        )
    return f"{subject}: registry error at {uri} ({_first(err)})"


@contextmanager
def _errors(subject: str, uri: str) -> Iterator[None]:
    """MLflow's exceptions as RegistryError messages naming the subject (no traceback)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        raise RegistryError(_explain(subject, uri, err)) from None


def _set_tracking_uri(mlflow: Any, uri: str) -> None:
    """Point MLflow's fluent API at ``uri`` without exporting it to the environment.

    MLflow also sets ``MLFLOW_TRACKING_URI``, which ``tracking_uri()`` would then read as the
    user's choice: a later ``HONED_HOME`` or spec setting in the same process would be ignored.
    """
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


class Registry:
    """A thin, typed layer over MlflowClient for honed's runs and models."""

    def __init__(self, cfg: RegistryConfig | None = None):
        _quiet()
        import mlflow
        from mlflow import MlflowClient

        from honed.registry.artifacts import register_scheme

        register_scheme()
        self.uri = tracking_uri(cfg)
        self._local = self.uri.startswith("sqlite:")
        if self.uri.startswith("http"):
            # A dead server is reported in seconds, not after minutes of backed-off retries.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        _set_tracking_uri(mlflow, self.uri)
        self._mlflow = mlflow
        self.client = MlflowClient(self.uri)
        self._manifests: dict[str, dict[str, str]] = {}  # logged model URI -> its manifest

    # -- tracking ---------------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        from honed.registry.artifacts import state_uri

        with _errors(f"experiment {name}", self.uri):
            existing = self.client.get_experiment_by_name(name)
            if existing is not None:
                return existing.experiment_id
            # Relative to the state folder, so the folder can move (registry/artifacts.py).
            location = state_uri(f"mlartifacts/{name}") if self._local else None
            return self.client.create_experiment(name, artifact_location=location)

    def log_run(
        self,
        experiment: str,
        run_name: str,
        folder: Path,
        params: dict,
        metrics: dict,
        tags: dict,
        history: list[dict[str, Any]] | None = None,
        datasets: list | None = None,
    ) -> tuple[str, str]:
        """Log a run and its folder as an MLflow model; returns (run_id, ``models:/m-...``).

        ``metrics``: nested numbers are flattened (``test.per_class.x.f1``); ``history``: the
        Trainer's log_history (a metric history per key); ``datasets``: ``dataset_inputs``.
        """
        mlflow = self._mlflow
        experiment_id = self.experiment_id(experiment)
        with (
            _errors(f"logging run {run_name}", self.uri),
            mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run,
        ):
            run_id = run.info.run_id
            mlflow.log_params(_flatten(params))
            mlflow.log_metrics(numeric_metrics(metrics))
            points = history_metrics(history or [])
            for start in range(0, len(points), _BATCH):
                self.client.log_batch(run_id, metrics=points[start : start + _BATCH])
            for dataset, context, input_tags in datasets or []:
                mlflow.log_input(dataset, context=context, tags=input_tags)
            mlflow.set_tags(tags)
            return run_id, self._log_model(folder)

    def _log_model(self, folder: Path) -> str:
        from honed.registry import pyfunc

        with (
            tempfile.TemporaryDirectory(dir=folder.parent, prefix=".honed-stage-") as tmp,
            warnings.catch_warnings(),
        ):
            # No input example: MLflow would load the model to check it, at registration time.
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            staged = Path(tmp) / pyfunc.ARTIFACT
            _stage(folder, staged)
            manifest = model_manifest(staged)  # checked at every load (resolve_ref_version)
            info = self._mlflow.pyfunc.log_model(
                name="model",
                python_model=pyfunc.HonedModel(),
                artifacts={pyfunc.ARTIFACT: str(staged)},
                signature=pyfunc.signature(pyfunc.model_task(folder)),
                pip_requirements=pyfunc.pip_requirements(),
                model_config={MANIFEST_TAG: manifest},
            )
            sbom = write_sbom(Path(tmp) / SBOM_FILE, model_components(folder.name, manifest))
            with _errors(f"storing the SBOM of {folder.name}", self.uri):
                self.client.log_model_artifact(info.model_id, str(sbom))  # next to MLmodel
        self._manifests[info.model_uri] = manifest  # register() records it without a download
        return info.model_uri

    # -- registry ---------------------------------------------------------------------------
    def register(
        self, name: str, source: str, run_id: str, tags: dict[str, str], alias: str | None
    ) -> str:
        from mlflow.exceptions import MlflowException

        model_id = _model_id(source)
        with _errors(f"registering {name}", self.uri):
            try:
                self.client.get_registered_model(name)
            except MlflowException as err:
                if "API request to" in str(err):
                    raise
                self.client.create_registered_model(name, description=f"honed specialist {name}")
            version = self.client.create_model_version(
                name, source=source, run_id=run_id, tags=tags, model_id=model_id
            )
            manifest = self._manifest_of(version)
            self.client.set_model_version_tag(
                name, version.version, MANIFEST_TAG, json.dumps(manifest, sort_keys=True)
            )
            previous = self.alias_holder(name, alias) if alias else None
            if alias:
                self.client.set_registered_model_alias(name, alias, version.version)
        self._record(name, alias, previous, str(version.version), "register", version=version)
        return str(version.version)

    def _manifest_of(self, version: Any) -> dict[str, str]:
        """The model files' sha256 recorded when the model was logged (its MLmodel), else
        computed from the files now (sources logged before manifests were recorded)."""
        if version.source in self._manifests:
            return self._manifests[version.source]
        root = self._version_root(version)
        if (root / "MLmodel").is_file():
            from mlflow.models import Model

            flavor = Model.load(str(root / "MLmodel")).flavors.get("python_function", {})
            recorded = (flavor.get("model_config") or {}).get(MANIFEST_TAG)
            if recorded:
                return dict(recorded)
        return model_manifest(self.local_folder(version))

    def verify(self, version: Any, folder: Path) -> None:
        """Refuse (DigestMismatchError naming the file) a version whose files differ from
        the sha256 manifest recorded at registration; versions registered before manifests
        were recorded load with a warning."""
        recorded = (version.tags or {}).get(MANIFEST_TAG)
        ref = f"{version.name}/{version.version}"
        if not recorded:
            if ref not in _UNVERIFIED:
                _UNVERIFIED.add(ref)
                log.warning("%s: registered without a digest manifest; not verified", ref)
            return
        verify_manifest(folder, json.loads(recorded), ref)

    def sbom_path(self, version: Any) -> Path:
        """The version's CycloneDX SBOM (the environment that registered it)."""
        with _errors(f"{version.name}/{version.version}", self.uri):
            return self._version_root(version) / SBOM_FILE

    def get_version(self, ref: str | ModelRef) -> Any:
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        with _errors(str(parsed), self.uri):
            if parsed.alias:
                return self.client.get_model_version_by_alias(parsed.name, parsed.alias)
            if parsed.version:
                return self.client.get_model_version(parsed.name, parsed.version)
            return self.latest(parsed.name)

    def latest(self, name: str) -> Any:
        versions = self.versions(name)
        if not versions:
            raise RegistryError(
                f"{name}: no registered versions at {self.uri}; "
                "`honed models list` shows what is registered"
            )
        return versions[0]

    def versions(self, name: str) -> list[Any]:
        with _errors(name, self.uri):
            found = self.client.search_model_versions(f"name = '{name}'")
        return sorted(found, key=lambda v: -int(v.version))

    def models(self) -> list[Any]:
        with _errors("listing models", self.uri):
            return list(self.client.search_registered_models())

    def promote(
        self,
        name: str,
        version: str | None,
        alias: str = "champion",
        *,
        reason: str = "",
        actor: str = "",
        evidence: dict[str, Any] | None = None,
        forced: bool = False,
    ) -> tuple[str, str | None]:
        """Point `alias` at `version` (default: the challenger); returns (new, previous).

        The move is recorded in the history (``registry/history.py``) as ``promote``, or
        ``forced_promote`` when `forced` (a promotion the gate did not pass), with `reason`,
        `actor` (default user@host) and `evidence` (e.g. the gate's summary).
        """
        target = self.get_version(
            ModelRef(name, alias="challenger")
            if version is None
            else ModelRef(name, version=version)
        )
        new = str(target.version)
        previous = self.alias_holder(name, alias)
        with _errors(f"{name}@{alias}", self.uri):
            self.client.set_registered_model_alias(name, alias, new)
            if previous and previous != new:
                self.client.set_model_version_tag(name, new, f"replaced_{alias}", str(previous))
        if previous != new:
            action = "forced_promote" if forced else "promote"
            self._record(name, alias, previous, new, action, reason, actor, evidence, target)
        return new, previous

    def rollback(
        self, name: str, alias: str = "champion", *, reason: str = "", actor: str = ""
    ) -> tuple[str, str]:
        """Move `alias` back to its previous holder (from the history); returns (new, old)."""
        from honed.registry.history import read_history, rollback_target

        current = self.alias_holder(name, alias)
        if current is None:
            raise RegistryError(f"{name}@{alias}: the alias is not set; nothing to roll back")
        target = rollback_target(read_history(name, self), alias, current)
        if target is None:  # history started after this alias moved: the version's own tag
            target = self.get_version(ModelRef(name, version=current)).tags.get(f"replaced_{alias}")
        if target is None:
            raise RegistryError(
                f"{name}@{alias}: no earlier holder of the alias is recorded; "
                "`honed models history` shows the moves, `honed models promote` sets a version"
            )
        version = self.get_version(ModelRef(name, version=target))
        with _errors(f"{name}@{alias}", self.uri):
            self.client.set_registered_model_alias(name, alias, target)
        self._record(name, alias, current, target, "rollback", reason, actor, None, version)
        return target, current

    def _record(
        self,
        name: str,
        alias: str | None,
        previous: str | None,
        new: str,
        action: str,
        reason: str = "",
        actor: str = "",
        evidence: dict[str, Any] | None = None,
        version: Any = None,
    ) -> None:
        """One history entry: appended to the state folder's file and tagged on the version."""
        from honed.registry.history import append_entry, make_entry, tag_of

        metrics = {}
        if version is not None:
            metrics = {
                k: v for k, v in self.run_metrics(version.run_id).items() if k.startswith("test_")
            }
        entry = make_entry(
            name,
            alias,
            previous,
            new,
            action,
            reason=reason,
            actor=actor,
            metrics=metrics,
            evidence=evidence,
        )
        append_entry(entry)
        key, value = tag_of(entry)
        with _errors(f"{name}/{new}", self.uri):
            self.client.set_model_version_tag(name, new, key, value)

    def tag_version(self, version: Any, tags: dict[str, str]) -> None:
        with _errors(f"{version.name}/{version.version}", self.uri):
            for key, value in tags.items():
                self.client.set_model_version_tag(version.name, version.version, key, value)

    def alias_holder(self, name: str, alias: str) -> str | None:
        """The version holding `alias`, or None when the alias is not set."""
        from mlflow.exceptions import MlflowException

        with _errors(f"{name}@{alias}", self.uri):
            try:
                return str(self.client.get_model_version_by_alias(name, alias).version)
            except MlflowException as err:
                if "API request to" in str(err):
                    raise
                return None  # no previous holder of the alias

    def local_folder(self, version: Any) -> Path:
        """A local folder with the version's model files (in place when the store is local)."""
        ref = f"{version.name}/{version.version}"
        with _errors(ref, self.uri):
            root = self._version_root(version)
        if (root / "MLmodel").is_file():
            return _pyfunc_folder(root)
        return root  # registered before versions were MLflow models: the run folder itself

    def _version_root(self, version: Any) -> Path:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

        uri = version.source
        model_id = _model_id(uri) or getattr(version, "model_id", None)
        if model_id:  # a logged model (MLflow 3): its own artifact location
            uri = self.client.get_logged_model(model_id).artifact_location
        repo = get_artifact_repository(uri, tracking_uri=self.uri)
        if not isinstance(repo, LocalArtifactRepository):
            return Path(self._mlflow.artifacts.download_artifacts(artifact_uri=uri))
        path = Path(repo.artifact_dir)
        if not path.is_dir():
            raise RegistryError(
                f"{version.name}/{version.version}: its files are missing at {path}. "
                "If the state folder moved, set HONED_HOME (or the tracking URI) to the folder "
                "that holds mlflow.db and mlartifacts/ together"
            )
        return path

    def run_metrics(self, run_id: str) -> dict[str, float]:
        if not run_id:
            return {}
        with _errors(f"run {run_id}", self.uri):
            return dict(self.client.get_run(run_id).data.metrics)


def _pyfunc_folder(root: Path) -> Path:
    """The honed folder inside an MLflow pyfunc model (its ``model`` artifact)."""
    from mlflow.models import Model

    from honed.registry.pyfunc import ARTIFACT

    flavor = Model.load(str(root / "MLmodel")).flavors.get("python_function", {})
    artifact = (flavor.get("artifacts") or {}).get(ARTIFACT) or {}
    return root / artifact.get("path", f"artifacts/{ARTIFACT}")


def _model_id(uri: str) -> str | None:
    """``models:/m-...`` (a logged model's URI) -> its id; None for other sources."""
    return uri.removeprefix("models:/") if uri.startswith("models:/m-") else None


def _first(err: Exception) -> str:
    return str(err).splitlines()[0][:200]


def resolve_ref(ref: str, cfg: RegistryConfig | None = None) -> Path:
    """A model reference (folder, NAME@ALIAS or NAME/VERSION) -> a local model folder."""
    return resolve_ref_version(ref, cfg)[0]


def resolve_ref_version(ref: str, cfg: RegistryConfig | None = None) -> tuple[Path, str | None]:
    """(local model folder, registry version "NAME/3") of a model reference; the version is
    None for a plain folder. An alias resolves to the version it points at now."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path.resolve(), None
    if "/" in ref and not re.match(r"^(models:/)?[A-Za-z0-9._-]+/\d+$", ref):
        raise RegistryError(f"{ref}: model folder not found")
    registry = Registry(cfg)
    version = registry.get_version(ref)
    folder = registry.local_folder(version)
    if not folder.is_dir():
        raise RegistryError(f"{ref}: registered, but its model folder is missing at {folder}")
    registry.verify(version, folder)  # every load of a registered version: sha256 vs registry
    return folder, f"{version.name}/{version.version}"
