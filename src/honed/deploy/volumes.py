"""The persistent volumes of what `honed deploy` renders, and what a pod can reach on them.

Two volumes, each created by the output (a PersistentVolumeClaim) or named explicitly as an
existing claim:

- the state volume (default claim `honed-models`, mounted at /models): HONED_HOME (the
  registry: MLflow's database and the registered model files; the run folders) and the
  Hugging Face cache. `deploy train` writes it, `deploy k8s` serves from it, so a model
  trained on the cluster is served as NAME@ALIAS with nothing copied.
- the data volume (default claim `honed-data`, mounted read-only at /data in training pods):
  the files the spec reads, uploaded once with `kubectl cp` (see training.upload_steps).

A pod sees nothing of the machine that rendered it: a local folder or file is a clear
DeployError naming it and the way onto a volume, never a path that silently does not exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from honed.deploy.common import DeployError

STATE_CLAIM = "honed-models"
STATE_MOUNT = "/models"
#: HONED_HOME and HF_HOME on the state volume, as in deploy/Dockerfile.
HONED_HOME = f"{STATE_MOUNT}/.honed"
HF_HOME = f"{STATE_MOUNT}/.hf"
DATA_CLAIM = "honed-data"
DATA_MOUNT = "/data"

AccessMode = Literal["ReadWriteOnce", "ReadWriteMany"]
ACCESS_MODES = ("ReadWriteOnce", "ReadWriteMany")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass(frozen=True)
class Claim:
    """A PersistentVolumeClaim the pods mount: created by the output, or an existing one."""

    name: str
    create: bool = True  # False: `--existing-...-claim`, mounted as it is
    size: str = "20Gi"
    storage_class: str | None = None  # None: the cluster's default StorageClass
    access_mode: AccessMode = "ReadWriteOnce"

    def __post_init__(self) -> None:
        if not _DNS_SUBDOMAIN.match(self.name):
            raise DeployError(f"claim name {self.name!r}: not a Kubernetes name (a-z, 0-9, -, .)")
        if not _QUANTITY.match(self.size):
            raise DeployError(f"volume size {self.size!r}: not a quantity such as 10Gi or 500Mi")
        if self.storage_class is not None and not _DNS_SUBDOMAIN.match(self.storage_class):
            raise DeployError(f"--storage-class {self.storage_class!r}: not a Kubernetes name")
        if self.access_mode not in ACCESS_MODES:
            raise DeployError(f"access mode {self.access_mode!r}: use {' or '.join(ACCESS_MODES)}")


def claim_from_flags(
    create: str | None,
    existing: str | None,
    default: str,
    *,
    size: str,
    storage_class: str | None,
    access_mode: str | None,
    shared: bool,
) -> Claim:
    """The claim `--X-claim NAME` (created) or `--existing-X-claim NAME` asks for.

    ``shared``: pods on several nodes may mount it at once, so a created claim asks for
    ReadWriteMany unless ``access_mode`` says otherwise (a ReadWriteOnce volume attaches to
    one node: a second node's pods would wait for it forever)."""
    if create and existing:
        raise DeployError(
            f"--*-claim {create} and --existing-*-claim {existing}: create a claim or mount an "
            "existing one, not both"
        )
    mode = access_mode or ("ReadWriteMany" if shared else "ReadWriteOnce")
    if existing:
        return Claim(existing, create=False, size=size, access_mode=mode)  # type: ignore[arg-type]
    return Claim(create or default, True, size, storage_class, mode)  # type: ignore[arg-type]


#: A claim outlives the workloads that mount it (the registry, the uploaded data).
PVC_LABELS = {"app.kubernetes.io/part-of": "honed", "app.kubernetes.io/managed-by": "honed"}


def pvc_manifest(claim: Claim) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": [claim.access_mode],
        "resources": {"requests": {"storage": claim.size}},
    }
    if claim.storage_class:
        spec["storageClassName"] = claim.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim.name, "labels": dict(PVC_LABELS)},
        "spec": spec,
    }


def pvc_docs(claims: list[Claim]) -> list[dict[str, Any]]:
    """The PersistentVolumeClaims to create (existing claims are only mounted)."""
    return [pvc_manifest(claim) for claim in claims if claim.create]


def claim_volume(volume: str, claim: Claim, read_only: bool = False) -> dict[str, Any]:
    source: dict[str, Any] = {"claimName": claim.name}
    if read_only:
        source["readOnly"] = True
    return {"name": volume, "persistentVolumeClaim": source}


def state_env() -> list[dict[str, str]]:
    """Where honed and Hugging Face keep their state in a pod: on the state volume."""
    return [{"name": "HONED_HOME", "value": HONED_HOME}, {"name": "HF_HOME", "value": HF_HOME}]


def check_pod_ref(ref: str, claim: str = STATE_CLAIM) -> None:
    """A model ref a pod can resolve: a registry ref (NAME@ALIAS, NAME/VERSION, models:/...),
    resolved on the state volume, or `packaged:NAME` (installed in the image). A folder or
    file of this machine is refused, naming it and how to get it onto the state volume."""
    from honed.serve.engine.loading import _REGISTRY_REF  # what `honed serve` resolves

    if ref.startswith("packaged:"):
        return
    local = _exists(ref)
    if _REGISTRY_REF.match(ref) and not local:
        return
    what = "a folder on this machine" if local else "not a registry ref (NAME@ALIAS, NAME/VERSION)"
    raise DeployError(
        f"{ref}: {what}; the pods cannot see this machine's files and resolve a model on the "
        f"state volume (claim {claim}, HONED_HOME={HONED_HOME}). Register it and deploy "
        "NAME@ALIAS or NAME/VERSION: train it on the cluster (`honed deploy train SPEC`, "
        "which registers on that volume), or copy your state folder there (`kubectl cp "
        f".honed POD:{HONED_HOME}` from a pod that mounts the claim) after `honed run` "
        "registered it locally"
    )


def _exists(ref: str) -> bool:
    try:
        return Path(ref).expanduser().exists()
    except (OSError, RuntimeError, ValueError):  # odd paths (too long, ~unknown-user)
        return False
