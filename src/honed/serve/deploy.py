"""Deployment artefacts: Kubernetes manifests, Inference Endpoints / SageMaker configs, hub push.

Weights are never baked into an image: the container resolves the model reference at start
from a mounted volume (HONED_HOME holds the registry) or fetches it on first start.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from honed.errors import HonedError

DEFAULT_IMAGE = "ghcr.io/honed/honed-serve:latest"
PORT = 8000
_K8S_NAME = re.compile(r"[^a-z0-9-]+")


class DeployError(HonedError):
    """A deployment artefact cannot be produced (bad option, unknown model, offline push)."""


@dataclass(frozen=True)
class DeployOptions:
    model_ref: str
    name: str
    image: str = DEFAULT_IMAGE
    replicas: int = 1
    max_replicas: int = 4
    cpu: str = "2"
    memory: str = "4Gi"
    gpus: int = 0
    volume_claim: str = "honed-models"
    keys_secret: str | None = None
    target_cpu_percent: int = 70


def k8s_name(text: str) -> str:
    """A DNS-1123 label from a model name (`financial-sentiment@champion` -> ...-champion)."""
    name = _K8S_NAME.sub("-", text.lower()).strip("-")[:53]
    if not name:
        raise DeployError(f"cannot derive a Kubernetes name from {text!r}; pass --name")
    return name


def _probe_key_exec(path: str) -> dict[str, Any]:
    # With API keys on, /readyz needs a key: probe from inside the pod with the probe key.
    script = (
        "import os,urllib.request as u;"
        f"u.urlopen(u.Request('http://127.0.0.1:{PORT}{path}',"
        "headers={'Authorization':'Bearer '+os.environ['HONED_PROBE_KEY']}),timeout=4)"
    )
    return {"exec": {"command": ["python", "-c", script]}}


def _container(o: DeployOptions) -> dict[str, Any]:
    resources: dict[str, Any] = {
        "requests": {"cpu": o.cpu, "memory": o.memory},
        "limits": {"memory": o.memory},
    }
    if o.gpus:
        resources["limits"]["nvidia.com/gpu"] = o.gpus
    env = [
        {"name": "HONED_HOME", "value": "/models/.honed"},
        {"name": "HONED_SERVE_HOST", "value": "0.0.0.0"},
        {"name": "HONED_SERVE_PORT", "value": str(PORT)},
    ]
    mounts = [{"name": "models", "mountPath": "/models"}]
    readiness: dict[str, Any] = {"httpGet": {"path": "/readyz", "port": "http"}}
    if o.keys_secret:
        env += [
            {"name": "HONED_SERVE_API_KEYS_FILE", "value": "/keys/keys.yaml"},
            {
                "name": "HONED_PROBE_KEY",
                "valueFrom": {"secretKeyRef": {"name": o.keys_secret, "key": "probe-key"}},
            },
        ]
        mounts.append({"name": "keys", "mountPath": "/keys", "readOnly": True})
        readiness = _probe_key_exec("/readyz")
    return {
        "name": "honed-serve",
        "image": o.image,
        "args": ["serve", o.model_ref],
        "ports": [{"name": "http", "containerPort": PORT}],
        "env": env,
        "volumeMounts": mounts,
        "resources": resources,
        "readinessProbe": {
            **readiness,
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


def k8s_manifests(o: DeployOptions) -> list[dict[str, Any]]:
    """Deployment (readiness /readyz, liveness /healthz), Service, HorizontalPodAutoscaler."""
    labels = {"app.kubernetes.io/name": "honed-serve", "app.kubernetes.io/instance": o.name}
    volumes: list[dict[str, Any]] = [
        {"name": "models", "persistentVolumeClaim": {"claimName": o.volume_claim}}
    ]
    if o.keys_secret:
        volumes.append(
            {
                "name": "keys",
                "secret": {
                    "secretName": o.keys_secret,
                    "items": [{"key": "keys.yaml", "path": "keys.yaml"}],
                },
            }
        )
    meta = {"name": o.name, "labels": labels, "annotations": {"honed.dev/model-ref": o.model_ref}}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": o.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [_container(o)],
                    "volumes": volumes,
                    "terminationGracePeriodSeconds": 60,
                },
            },
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
    return [deployment, service, hpa]


def write_k8s(o: DeployOptions, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for doc in k8s_manifests(o):
        path = out / f"{doc['kind'].lower()}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        files.append(path)
    return files


def endpoint_config(
    target: str, model_ref: str, name: str, repo: str | None, image: str, instance: str | None
) -> dict[str, Any]:
    """Hugging Face Inference Endpoints (custom container) or SageMaker endpoint config."""
    env = {"HONED_SERVE_HOST": "0.0.0.0", "HONED_SERVE_MODELS": json.dumps([model_ref])}
    if target == "hf":
        env["HONED_SERVE_PORT"] = str(PORT)
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
                "repository": repo or name,
                "framework": "custom",
                "task": "custom",
                "image": {
                    "custom": {"url": image, "health_route": "/healthz", "port": PORT, "env": env}
                },
            },
        }
    if target == "sagemaker":
        # SageMaker sends traffic to port 8080 and calls GET /ping and POST /invocations.
        env["HONED_SERVE_PORT"] = "8080"
        env["HONED_SERVE_SAGEMAKER"] = "true"
        return {
            "Model": {
                "ModelName": name,
                "PrimaryContainer": {"Image": image, "Environment": env},
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
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo,
            folder_path=str(folder),
            ignore_patterns=["checkpoints/*", "*.bin", "*.pt", "*.pth", "*.ckpt"],
        )
    except Exception as err:  # hub errors come in many classes; the message is what matters
        raise DeployError(f"push to {repo!r} failed: {err}") from None
    return str(getattr(info, "commit_url", repo))
