"""Artifact locations relative to the state folder: ``honed-state:/mlartifacts/...``.

MLflow stores an artifact location per experiment, run and logged model as an absolute URI, so
a ``.honed`` folder that is moved (or mounted into a container at another path) keeps pointing
at where it used to be. honed's embedded registry records ``honed-state:/<path>`` instead: the
path is relative to the folder that holds the SQLite database, resolved on every access. The
database and ``mlartifacts/`` move together and keep working.

MLflow finds this scheme through the ``mlflow.artifact_repository`` entry point of the honed
package, and honed registers it again on use (``register_scheme``), so plain
``mlflow.pyfunc.load_model("models:/NAME@ALIAS")`` works once the tracking URI names the moved
database (``honed.registry.tracking_uri()`` gives it).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

SCHEME = "honed-state"


def sqlite_folder(uri: str | None) -> Path | None:
    """The folder of the database in a ``sqlite:///`` tracking URI (None for other stores)."""
    if not uri or not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent


def state_root(tracking_uri: str | None = None) -> Path:
    """Where ``honed-state:`` paths live: next to the tracking database in use.

    MLflow passes the tracking URI to some artifact repositories and not to others (a
    ``models:/`` download does not), so the process's current tracking URI comes next, then
    the state folder (``$HONED_HOME``).
    """
    import mlflow

    from honed.state import state_dir

    return sqlite_folder(tracking_uri) or sqlite_folder(mlflow.get_tracking_uri()) or state_dir()


def state_uri(relative: str) -> str:
    """``mlartifacts/x`` -> ``honed-state:/mlartifacts/x``."""
    return f"{SCHEME}:/{relative.strip('/')}"


def resolve(uri: str, tracking_uri: str | None = None) -> Path:
    """The local path of a ``honed-state:`` URI under the current state root."""
    return state_root(tracking_uri) / urlparse(uri).path.lstrip("/")


class StateArtifactRepository(LocalArtifactRepository):
    """A local artifact repository whose root is found relative to the state folder."""

    def __init__(
        self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None
    ) -> None:
        super().__init__(resolve(artifact_uri, tracking_uri).as_uri(), tracking_uri, registry_uri)


def register_scheme() -> None:
    """Make ``honed-state:`` known to MLflow in this process (idempotent)."""
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry

    _artifact_repository_registry.register(SCHEME, StateArtifactRepository)
