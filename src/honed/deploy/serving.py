"""Deployment artefacts: Kubernetes manifests, Inference Endpoints / SageMaker configs, hub push.

Weights are never baked into an image. On Kubernetes the container resolves the registry
reference from a mounted volume (HONED_HOME holds the registry). Managed endpoints cannot see
that registry: an Inference Endpoint loads the hub repo `honed push` uploaded (mounted at
/repository), a SageMaker model the model.tar.gz it extracts into /opt/ml/model.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from honed.deploy.common import (
    PORT,
    DeployError,
    container_resources,
    image_ref,
    pod_security_context,
    scratch_volumes,
    security_context,
)
from honed.deploy.manifests import write_manifests
from honed.deploy.volumes import (
    STATE_CLAIM,
    STATE_MOUNT,
    Claim,
    check_pod_ref,
    claim_volume,
    pvc_docs,
    state_env,
)


@dataclass(frozen=True)
class DeployOptions:
    model_ref: str
    name: str
    image: str | None = None  # None: IMAGE_REPO at this honed version (see image_ref)
    replicas: int = 1
    max_replicas: int = 4
    cpu: str = "2"
    memory: str = "4Gi"
    gpus: int = 0
    volume_claim: str = STATE_CLAIM  # the state volume: HONED_HOME (registry), HF cache
    # True: the output creates the claim (a PersistentVolumeClaim); False: it exists already
    # (`--existing-claim`), e.g. the one `honed deploy train` created.
    create_claim: bool = True
    claim_size: str = "20Gi"
    storage_class: str | None = None  # None: the cluster's default StorageClass
    # None: ReadWriteMany when replicas on several nodes may mount it, else ReadWriteOnce.
    access_mode: str | None = None
    keys_secret: str | None = None
    # API keys reach the pod another way (a secrets operator, a CSI driver, a patch): the pod
    # still gets HONED_SERVE_API_KEYS_FILE and HONED_PROBE_KEY, from that source.
    external_keys: bool = False
    target_cpu_percent: int = 70
    # A `limits` storage URI (redis://HOST:6379/0) every replica counts per-key rates on;
    # None: each pod counts on its own (memory://).
    rate_limit_storage: str | None = None


def _probe_key_exec(path: str) -> dict[str, Any]:
    # With API keys on, /readyz needs a key: probe from inside the pod with the probe key.
    script = (
        "import os,urllib.request as u;"
        f"u.urlopen(u.Request('http://127.0.0.1:{PORT}{path}',"
        "headers={'Authorization':'Bearer '+os.environ['HONED_PROBE_KEY']}),timeout=4)"
    )
    return {"exec": {"command": ["python", "-c", script]}}


def _keys_env(o: DeployOptions) -> list[dict[str, Any]]:
    if not o.keys_secret:
        return []  # external keys: the source that provides them sets both variables
    return [
        {"name": "HONED_SERVE_API_KEYS_FILE", "value": "/keys/keys.yaml"},
        {
            "name": "HONED_PROBE_KEY",
            "valueFrom": {"secretKeyRef": {"name": o.keys_secret, "key": "probe-key"}},
        },
    ]


def _rate_limit_env(o: DeployOptions) -> list[dict[str, str]]:
    if not o.rate_limit_storage:
        return []
    return [{"name": "HONED_SERVE_RATE_LIMIT_STORAGE", "value": o.rate_limit_storage}]


def shared_limits_warning(o: DeployOptions) -> str | None:
    """A warning when several replicas would each count a key's rate on their own (the
    limit would multiply by the replica count under the autoscaler)."""
    if o.rate_limit_storage or max(o.replicas, o.max_replicas) <= 1:
        return None
    return (
        f"warning: up to {max(o.replicas, o.max_replicas)} replicas count each key's rate "
        "limit and feedback quota on their own; pass --rate-limit-storage redis://HOST:6379/0 "
        "to share them"
    )


def _container(o: DeployOptions) -> dict[str, Any]:
    resources = container_resources(o.cpu, o.memory, o.gpus)
    env = [
        *state_env(),
        {"name": "HONED_SERVE_HOST", "value": "0.0.0.0"},
        {"name": "HONED_SERVE_PORT", "value": str(PORT)},
        *_keys_env(o),
        *_rate_limit_env(o),
    ]
    mounts = [{"name": "models", "mountPath": STATE_MOUNT}, *scratch_volumes()[1]]
    if o.keys_secret:
        mounts.append({"name": "keys", "mountPath": "/keys", "readOnly": True})
    return {
        "name": "honed-serve",
        "image": image_ref(o.image),
        "args": ["serve", o.model_ref],
        "ports": [{"name": "http", "containerPort": PORT}],
        "env": env,
        "volumeMounts": mounts,
        "resources": resources,
        "securityContext": security_context(),
        "readinessProbe": {
            **_probe_key_exec("/readyz"),  # keys are always on: /readyz needs the probe key
            "periodSeconds": 5,
            "failureThreshold": 3,
            "timeoutSeconds": 5,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
            "timeoutSeconds": 5,
        },
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 60,
        },
    }


def state_claim(o: DeployOptions) -> Claim:
    """The state volume's claim; ReadWriteMany by default when the HPA may scale the pods
    beyond one (pods on other nodes cannot attach a ReadWriteOnce volume)."""
    shared = max(o.replicas, o.max_replicas) > 1
    mode = o.access_mode or ("ReadWriteMany" if shared else "ReadWriteOnce")
    return Claim(o.volume_claim, o.create_claim, o.claim_size, o.storage_class, mode)  # type: ignore[arg-type]


def _volumes(o: DeployOptions) -> list[dict[str, Any]]:
    volumes = [claim_volume("models", state_claim(o)), *scratch_volumes()[0]]
    if o.keys_secret:
        volumes.append(
            {
                "name": "keys",
                "secret": {
                    "secretName": o.keys_secret,
                    "items": [{"key": "keys.yaml", "path": "keys.yaml"}],
                    "defaultMode": 0o440,
                },
            }
        )
    return volumes


def check_keys(o: DeployOptions) -> None:
    """The Service listens on 0.0.0.0, where the server refuses to start without API keys:
    refuse to render a pod that would crash-loop (or, on an older image, serve every route,
    admin included, to the cluster)."""
    if not o.keys_secret and not o.external_keys:
        raise DeployError(
            "the pods listen on 0.0.0.0 and need API keys: pass --keys-secret NAME (a Secret "
            "with keys.yaml from `honed apikey create` and probe-key, an infer key for the "
            "readiness probe), or --external-keys if HONED_SERVE_API_KEYS_FILE and "
            "HONED_PROBE_KEY reach the pod another way"
        )


def _pod_spec(o: DeployOptions) -> dict[str, Any]:
    return {
        "automountServiceAccountToken": False,  # the server never calls the Kubernetes API
        "securityContext": pod_security_context(),  # the models volume writable by its user
        "containers": [_container(o)],
        "volumes": _volumes(o),
        "terminationGracePeriodSeconds": 60,
    }


def k8s_manifests(o: DeployOptions) -> list[dict[str, Any]]:
    """Deployment (readiness /readyz, liveness /healthz), Service, HorizontalPodAutoscaler,
    and the state volume's PersistentVolumeClaim unless it exists already."""
    check_keys(o)
    check_pod_ref(o.model_ref, o.volume_claim)
    labels = {"app.kubernetes.io/name": "honed-serve", "app.kubernetes.io/instance": o.name}
    meta = {"name": o.name, "labels": labels, "annotations": {"honed.dev/model-ref": o.model_ref}}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": o.replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": _pod_spec(o)},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": o.name, "labels": labels},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": o.name, "labels": labels},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": o.name},
            "minReplicas": o.replicas,
            "maxReplicas": max(o.replicas, o.max_replicas),
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": o.target_cpu_percent,
                        },
                    },
                }
            ],
        },
    }
    return [deployment, service, hpa, *pvc_docs([state_claim(o)])]


def write_k8s(o: DeployOptions, out: Path) -> list[Path]:
    """Render, validate every doc, then write: a refusal leaves nothing behind."""
    return write_manifests(k8s_manifests(o), out)


# Where each managed container finds the model: Inference Endpoints mounts the endpoint's
# hub repository at /repository; SageMaker extracts ModelDataUrl (a model.tar.gz) into
# /opt/ml/model. Neither container can reach a registry alias or a path on this machine.
HF_REPOSITORY_DIR = "/repository"
SAGEMAKER_MODEL_DIR = "/opt/ml/model"
_HUB_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_S3_TARBALL = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/\S+\.tar\.gz$")
_TAR_SKIP = ("checkpoints", "*.bin", "*.pt", "*.pth", "*.ckpt")  # as push: no pickle files
HUB_REPO_TAG = "hub_repo"
HUB_REVISION_TAG = "hub_revision"


@dataclass(frozen=True)
class EndpointSource:
    """What an endpoint's container loads: a hub repo (hf) or an S3 model.tar.gz (sagemaker)."""

    hub_repo: str | None = None
    revision: str | None = None
    model_data: str | None = None


def _is_registry_ref(ref: str) -> bool:
    return not Path(ref).expanduser().exists() and bool("@" in ref or re.search(r"/\d+$", ref))


def served_name(model_ref: str, folder: Path) -> str:
    """The model id clients send: the registered name, else the folder's name."""
    if _is_registry_ref(model_ref):
        return model_ref.removeprefix("models:/").split("@")[0].split("/")[0]
    return folder.name


def check_self_contained(model_ref: str, folder: Path) -> None:
    """An adapter needs its base in the container: only packaged bases travel with the image."""
    if not (folder / "adapter_config.json").is_file():
        return
    lineage_file = folder / "lineage.json"
    lineage = json.loads(lineage_file.read_text()) if lineage_file.is_file() else {}
    base = str((lineage.get("base_model") or {}).get("source") or "")
    if not base.startswith("packaged:"):
        raise DeployError(
            f"{model_ref}: an adapter over {base or 'an unrecorded base'}, which the endpoint "
            "cannot load; `honed merge` it into a standalone folder and deploy that"
        )


def recorded_push(model_ref: str) -> tuple[str, str | None] | None:
    """(hub repo, revision) that `honed push` recorded on a registry version, if any."""
    if not _is_registry_ref(model_ref):
        return None
    from honed.registry.store import Registry

    tags = Registry().get_version(model_ref).tags
    repo = tags.get(HUB_REPO_TAG)
    return (repo, tags.get(HUB_REVISION_TAG) or None) if repo else None


def record_push(model_ref: str, repo: str, commit_url: str) -> None:
    """Tag a registry version with the hub repo (and commit) it was pushed to."""
    if not _is_registry_ref(model_ref):
        return
    from honed.registry.store import Registry

    registry = Registry()
    version = registry.get_version(model_ref)
    tags = {HUB_REPO_TAG: repo}
    if "/commit/" in commit_url:
        tags[HUB_REVISION_TAG] = commit_url.rsplit("/commit/", 1)[1]
    registry.tag_version(version, tags)


def _hub_source(model_ref: str, repo: str | None, revision: str | None) -> EndpointSource:
    if not repo:
        pushed = recorded_push(model_ref)
        if pushed is None:
            raise DeployError(
                f"{model_ref}: Inference Endpoints load the model from a hub repo; pass "
                f"--hub-repo ME/REPO after `honed push {model_ref} --repo ME/REPO`"
            )
        repo, revision = pushed[0], revision or pushed[1]
    if not _HUB_REPO.match(repo) or Path(repo).expanduser().exists():
        raise DeployError(f"--hub-repo {repo!r}: not a hub repo id (NAMESPACE/NAME)")
    return EndpointSource(hub_repo=repo, revision=revision)


def _s3_source(model_ref: str, model_data: str | None) -> EndpointSource:
    if not model_data:
        raise DeployError(
            f"{model_ref}: SageMaker loads the model from S3; pass --model-data "
            "s3://BUCKET/KEY/model.tar.gz (honed writes the archive next to --out to upload)"
        )
    if not _S3_TARBALL.match(model_data):
        raise DeployError(f"--model-data {model_data!r}: not an s3://BUCKET/KEY.tar.gz URI")
    return EndpointSource(model_data=model_data)


def endpoint_source(
    target: str,
    model_ref: str,
    folder: Path,
    hub_repo: str | None = None,
    revision: str | None = None,
    model_data: str | None = None,
) -> EndpointSource:
    """Where the target's container will find the model; a clear error when nowhere."""
    check_self_contained(model_ref, folder)
    if target == "hf":
        return _hub_source(model_ref, hub_repo, revision)
    if target == "sagemaker":
        return _s3_source(model_ref, model_data)
    raise DeployError(f"unknown target {target!r}; use 'hf' or 'sagemaker'")


def _serve_env(served: str, model_dir: str, port: int) -> dict[str, str]:
    return {
        "HONED_SERVE_HOST": "0.0.0.0",
        "HONED_SERVE_PORT": str(port),
        "HONED_SERVE_MODELS": json.dumps([f"{served}={model_dir}"]),
        "HF_HUB_OFFLINE": "1",  # the model is on local disk; nothing to fetch at start
    }


def endpoint_config(
    target: str,
    served: str,
    name: str,
    source: EndpointSource,
    image: str,
    instance: str | None,
) -> dict[str, Any]:
    """Hugging Face Inference Endpoints (custom container) or SageMaker endpoint config.

    ``served``: the model id clients send; ``source``: from ``endpoint_source``.
    """
    if target == "hf":
        if not source.hub_repo:
            raise DeployError("an Inference Endpoint needs a hub repo (--hub-repo)")
        env = _serve_env(served, HF_REPOSITORY_DIR, PORT)
        return {
            "name": name,
            "type": "protected",
            "provider": {"vendor": "aws", "region": "us-east-1"},
            "compute": {
                "accelerator": "gpu",
                "instanceType": instance or "nvidia-l4",
                "instanceSize": "x1",
                "scaling": {"minReplica": 1, "maxReplica": 2},
            },
            "model": {
                "repository": source.hub_repo,
                "revision": source.revision or "main",
                "framework": "custom",
                "task": "custom",
                "image": {
                    "custom": {"url": image, "health_route": "/healthz", "port": PORT, "env": env}
                },
            },
        }
    if target == "sagemaker":
        if not source.model_data:
            raise DeployError("a SageMaker model needs its S3 model data (--model-data)")
        # SageMaker sends traffic to port 8080 and calls GET /ping and POST /invocations.
        env = _serve_env(served, SAGEMAKER_MODEL_DIR, 8080)
        env["HONED_SERVE_SAGEMAKER"] = "true"
        return {
            "Model": {
                "ModelName": name,
                "PrimaryContainer": {
                    "Image": image,
                    "ModelDataUrl": source.model_data,
                    "Environment": env,
                },
                "ExecutionRoleArn": "<your SageMaker execution role ARN>",
            },
            "EndpointConfig": {
                "EndpointConfigName": f"{name}-config",
                "ProductionVariants": [
                    {
                        "VariantName": "AllTraffic",
                        "ModelName": name,
                        "InitialInstanceCount": 1,
                        "InstanceType": instance or "ml.g5.xlarge",
                        "ContainerStartupHealthCheckTimeoutInSeconds": 600,
                    }
                ],
            },
            "Endpoint": {"EndpointName": name, "EndpointConfigName": f"{name}-config"},
        }
    raise DeployError(f"unknown target {target!r}; use 'hf' or 'sagemaker'")


def write_model_tarball(folder: Path, out: Path) -> Path:
    """model.tar.gz with the folder's files at its root (SageMaker extracts it to /opt/ml/model)."""
    import fnmatch
    import tarfile

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        skip = any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in _TAR_SKIP)
        return None if skip else info

    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        for entry in sorted(folder.iterdir()):
            tar.add(entry, arcname=entry.name, filter=keep)
    return out


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def check_online() -> None:
    """Raise DeployError at once when the hub cannot be used (HF_HUB_OFFLINE or no route)."""
    if _offline():
        raise DeployError(
            "cannot push: HF_HUB_OFFLINE is set. Unset it (and log in with "
            "`hf auth login`) to publish to the Hugging Face Hub."
        )
    from honed.models.resolve import hub_reachable

    if not hub_reachable():
        raise DeployError("cannot push: huggingface.co is not reachable from this machine")


def push(folder: Path, repo: str, private: bool = True, token: str | None = None) -> str:
    """Upload a model/adapter folder to the hub; offline gives a clear error at once."""
    check_online()
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    card = card_for_repo(folder, repo)
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo,
            folder_path=str(folder),
            ignore_patterns=[*PUSH_IGNORED, *(["README.md"] if card else [])],
        )
        if card:
            info = api.upload_file(path_or_fileobj=card, path_in_repo="README.md", repo_id=repo)
    except Exception as err:  # hub errors come in many classes; the message is what matters
        raise DeployError(f"push to {repo!r} failed: {err}") from None
    return str(getattr(info, "commit_url", repo))


#: Never published: training checkpoints (absolute paths, optimizer state) and pickle files.
PUSH_IGNORED = ("checkpoints/*", "*.bin", "*.pt", "*.pth", "*.ckpt")
#: The model card's stand-in for where the model is loaded from (see model_card.md.j2).
CARD_PLACEHOLDER = "PATH_OR_HUB_ID"


def card_for_repo(folder: Path, repo: str) -> bytes | None:
    """The folder's model card with its loading examples naming the pushed repo (None: no
    card). Locally the card says PATH_OR_HUB_ID; on the Hub the snippets run as written."""
    card = Path(folder) / "README.md"
    if not card.is_file():
        return None
    return card.read_text(encoding="utf-8").replace(CARD_PLACEHOLDER, repo).encode("utf-8")
