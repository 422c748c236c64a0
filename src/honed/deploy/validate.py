"""Offline schema validation of every manifest honed renders.

Built-in kinds (Deployment, Service, Job, PersistentVolumeClaim, ...) are checked strictly
(unknown fields refused) against the Kubernetes OpenAPI schemas that `kubernetes-validate`
ships. Custom resources (Kubeflow's PyTorchJob, KServe's InferenceService) are checked against
the `openAPIV3Schema` of their published CustomResourceDefinitions, vendored under
`deploy/schemas/` as `<group>_<version>_<kind>.json` (lower case), because no package ships
them; each file names the CRD release it was taken from.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from honed.deploy.common import DeployError

SCHEMAS = Path(__file__).parent / "schemas"
#: apiVersion groups whose kinds are built into Kubernetes (checked by kubernetes-validate).
_CORE_GROUPS = {
    "",
    "apps",
    "batch",
    "autoscaling",
    "policy",
    "networking.k8s.io",
    "rbac.authorization.k8s.io",
}


class ManifestInvalidError(DeployError):
    """A rendered manifest does not match its kind's schema (a bug in honed, or a bad option)."""


def _group_version(doc: dict[str, Any]) -> tuple[str, str]:
    api = str(doc.get("apiVersion", ""))
    group, _, version = api.rpartition("/")
    return group, version


def crd_schema_path(doc: dict[str, Any]) -> Path:
    group, version = _group_version(doc)
    return SCHEMAS / f"{group}_{version}_{doc.get('kind', '')}.json".lower()


@cache
def _crd_schema(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    return data.get("schema", data)  # {"source": ..., "schema": {...}} or the bare schema


@cache
def _crd_validator(path: Path) -> Any:
    # Not checked against its meta-schema here (seconds for a CRD's schema, at every
    # command): the tests check each vendored file once (check_vendored_schema).
    import jsonschema

    schema = _crd_schema(path)
    return jsonschema.validators.validator_for(schema)(schema)


def check_vendored_schema(path: Path) -> None:
    """Raise jsonschema.SchemaError when a vendored file is not a valid JSON Schema."""
    import jsonschema

    schema = _crd_schema(path)
    jsonschema.validators.validator_for(schema).check_schema(schema)


def _validate_builtin(doc: dict[str, Any], k8s_version: str | None) -> None:
    try:
        import kubernetes_validate
    except ImportError as err:  # a dev dependency: `pip install kubernetes-validate`
        raise DeployError(
            "schema validation needs kubernetes-validate (pip install kubernetes-validate)"
        ) from err
    version = k8s_version or kubernetes_validate.latest_version()
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        raise ManifestInvalidError(f"{_name(doc)}: {err.message} at {_where(err)}") from err


def _validate_crd(doc: dict[str, Any]) -> None:
    import jsonschema

    path = crd_schema_path(doc)
    if not path.is_file():
        raise ManifestInvalidError(f"{_name(doc)}: no vendored schema {path.name}")
    # As jsonschema.validate does, with the validator (and its schema check) cached.
    error = jsonschema.exceptions.best_match(_crd_validator(path).iter_errors(doc))
    if error is not None:
        raise ManifestInvalidError(f"{_name(doc)}: {error.message} at {_where(error)}")


def _name(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind', '?')}/{doc.get('metadata', {}).get('name', '?')}"


def _where(err: Any) -> str:
    return "/".join(str(p) for p in getattr(err, "absolute_path", getattr(err, "path", []))) or "/"


def validate_manifest(doc: dict[str, Any], k8s_version: str | None = None) -> None:
    """Raise ManifestInvalidError naming the kind, name, field and problem; None when valid."""
    group, _ = _group_version(doc)
    if group in _CORE_GROUPS:
        _validate_builtin(doc, k8s_version)
    else:
        _validate_crd(doc)


def validate_manifests(docs: list[dict[str, Any]], k8s_version: str | None = None) -> None:
    for doc in docs:
        validate_manifest(doc, k8s_version)
