"""What every rendered manifest shares: the pinned image, names, the restricted security
context, the pod's writable scratch mounts, and plain YAML (no anchors)."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from honed.errors import HonedError

IMAGE_REPO = "ghcr.io/honed/honed-serve"
PORT = 8000
_K8S_NAME = re.compile(r"[^a-z0-9-]+")
#: The image's non-root user (deploy/Dockerfile creates it with this uid and gid).
RUN_AS = 10001
#: Writable paths on a read-only root filesystem: temp files and library caches
#: (HOME=/home/honed in the image; torch, triton and HF write under ~/.cache).
SCRATCH_MOUNTS = {"tmp": "/tmp", "cache": "/home/honed/.cache"}
_DOCKER_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_IMAGE_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class DeployError(HonedError):
    """A deployment artefact cannot be produced (bad option, unknown model, offline push)."""


def image_tag() -> str:
    """The image tag of this honed release: its version (a local `+build` part as `-build`)."""
    import importlib.metadata  # not at import: the deploy commands register at CLI start-up

    try:
        version = importlib.metadata.version("honed")
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
        raise DeployError("honed's version is unknown (not installed); pass --image") from None
    return version.replace("+", "-")


def image_ref(image: str | None = None, tag: str | None = None) -> str:
    """The image to deploy, pinned: IMAGE_REPO at this honed version, `tag` (a tag or a
    sha256 digest) on `image` or IMAGE_REPO, or `image` as given; never untagged or :latest,
    which would run whatever was pushed last."""
    if tag:
        repo = image or IMAGE_REPO
        if _IMAGE_DIGEST.match(tag):
            return f"{repo}@{tag}"
        if not _DOCKER_TAG.match(tag):
            raise DeployError(f"--image-tag {tag!r}: not a tag or a sha256:<64 hex> digest")
        image = f"{repo}:{tag}"
    image = image or f"{IMAGE_REPO}:{image_tag()}"
    check_pinned(image)
    return image


def check_pinned(image: str) -> None:
    if "@sha256:" in image:
        return
    last = image.rsplit("/", 1)[-1]
    tag = last.partition(":")[2]
    if not tag or tag == "latest":
        raise DeployError(
            f"image {image!r}: pin a version tag or a digest (REPO:TAG, REPO@sha256:...), "
            "not an untagged or :latest image that changes under the deployment"
        )


def k8s_name(text: str) -> str:
    """A DNS-1123 label from a model name (`financial-sentiment@champion` -> ...-champion)."""
    name = _K8S_NAME.sub("-", text.lower()).strip("-")[:53]
    if not name:
        raise DeployError(f"cannot derive a Kubernetes name from {text!r}; pass --name")
    return name


def security_context() -> dict[str, Any]:
    """The container's: non-root, read-only root filesystem, no privilege escalation, no
    Linux capabilities, the runtime's default seccomp profile (the restricted Pod Security
    Standard)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> dict[str, Any]:
    """The pod's: the image's non-root user, and volumes (PVCs, emptyDirs) group-owned by it
    so that it can write them; ownership is changed only when the volume's root does not
    match already (a recursive chown of a large data volume at every start is slow)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def scratch_volumes() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts) of the writable scratch folders on a read-only root filesystem."""
    volumes = [{"name": name, "emptyDir": {}} for name in SCRATCH_MOUNTS]
    mounts = [{"name": name, "mountPath": path} for name, path in SCRATCH_MOUNTS.items()]
    return volumes, mounts


@cache
def _dumper() -> type:
    """Plain YAML: a dict used twice (the labels) is written twice, not as &id001/*id001,
    which some tools (kubectl diff, policy engines, humans) read badly; a multi-line value (a
    spec in a ConfigMap) as a readable `|` block. Built on first use: yaml stays off the CLI's
    start-up path (`honed --help` registers the deploy commands)."""
    import yaml

    class NoAliasDumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    def block_strings(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
        style = "|" if "\n" in text else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)

    NoAliasDumper.add_representer(str, block_strings)
    return NoAliasDumper


def to_yaml(doc: dict[str, Any]) -> str:
    import yaml

    return yaml.dump(doc, Dumper=_dumper(), sort_keys=False)


def container_resources(cpu: str, memory: str, gpus: int = 0) -> dict[str, Any]:
    """Requests and limits: memory limited (an OOM kill beats a node's swap), CPU only
    requested (no throttling of a bursty server), GPUs as `nvidia.com/gpu` limits."""
    resources: dict[str, Any] = {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"memory": memory},
    }
    if gpus:
        resources["limits"]["nvidia.com/gpu"] = gpus
    return resources
