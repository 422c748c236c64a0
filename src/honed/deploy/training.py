"""`honed deploy train`: the spec's `honed run` as a Kubernetes workload.

One pod: a plain batch/v1 `Job`. Several: a Kubeflow Training Operator `PyTorchJob`
(kubeflow.org/v1; a Master and Workers, `nprocPerNode` processes each), whose operator sets
the torchrun rendezvous environment (PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, ...). Both
run the same command in the same image as a user on one machine: `launch_argv(...)`.

The spec travels in a ConfigMap, rewritten for the pod: every local path it reads (data
sources, golden and frozen sets, a local base model) points at its copy on the data volume,
and the run folder at the state volume (HONED_HOME), where the run also registers its model,
so that `honed deploy k8s NAME@ALIAS` serves it from the same claim. A path the pods could
not reach (absolute, or outside the folder mirrored on the data volume) is refused with the
way to put it there.
"""

from __future__ import annotations

import copy
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from honed.deploy.common import (
    DeployError,
    container_resources,
    image_ref,
    k8s_name,
    pod_security_context,
    scratch_volumes,
    security_context,
    to_yaml,
)
from honed.deploy.manifests import manifest_files, write_manifests
from honed.deploy.volumes import (
    DATA_CLAIM,
    DATA_MOUNT,
    HONED_HOME,
    STATE_CLAIM,
    STATE_MOUNT,
    Claim,
    claim_volume,
    pvc_docs,
    state_env,
)
from honed.spec import RunSpec, load_spec, parse_spec
from honed.train.distributed import launch_argv

SPEC_DIR = "/etc/honed"
SPEC_FILE = f"{SPEC_DIR}/spec.yaml"
#: The Training Operator finds the training container of a PyTorchJob by this name.
PYTORCH_CONTAINER = "pytorch"
APP = "honed-train"
#: Remote MLflow servers keep working from a pod; a local store must be the state volume's.
_REMOTE_TRACKING = ("http://", "https://", "databricks")


@dataclass(frozen=True)
class TrainOptions:
    spec_path: Path
    name: str | None = None  # None: from the spec's name
    image: str | None = None  # None: IMAGE_REPO at this honed version (see image_ref)
    workers: int = 1  # pods: 1 -> Job, more -> PyTorchJob (1 Master + workers-1 Workers)
    gpus: int = 0  # per pod (nvidia.com/gpu)
    processes: int | None = None  # per pod; None: one per GPU, else the spec's, else 1
    cpu: str = "4"
    memory: str = "16Gi"
    data: Claim = field(default_factory=lambda: Claim(DATA_CLAIM, size="10Gi"))
    state: Claim = field(default_factory=lambda: Claim(STATE_CLAIM))
    data_root: Path | None = None  # the folder mirrored on the data volume; None: the spec's
    backoff_limit: int = 3


@dataclass(frozen=True)
class Upload:
    """A local file or folder the spec reads, and where the pods find it on the data volume."""

    local: Path
    remote: str


@dataclass
class TrainPlan:
    name: str
    docs: list[dict[str, Any]]  # applied with `kubectl apply -f OUT`
    upload_pod: dict[str, Any]  # OUT/upload/pod.yaml: mounts the data volume for `kubectl cp`
    uploads: list[Upload]
    spec: RunSpec  # the rewritten spec, as the pods read it
    options: TrainOptions


class _PodPaths:
    """Rewrites the spec's local paths to the data volume, collecting what to upload."""

    def __init__(self, base_dir: Path, data_root: Path, data_claim: str) -> None:
        self.base_dir, self.root, self.claim = base_dir, data_root.resolve(), data_claim
        self.uploads: list[Upload] = []
        self.on_volume = False  # some path is on the data volume: the pods mount it

    def is_local(self, value: str) -> bool:
        try:
            return (self.base_dir / Path(value).expanduser()).exists()
        except (OSError, ValueError):
            return False

    def rewrite(self, value: str, where: str) -> str:
        path = Path(value).expanduser()
        if path.is_absolute():
            if _on_data_volume(value):
                self.on_volume = True
                return value  # written for the cluster: already on the data volume
            raise DeployError(f"{where}: {value} is a path on this machine; {self.how(path)}")
        local = (self.base_dir / path).resolve()
        try:
            relative = local.relative_to(self.root)
        except ValueError:
            raise DeployError(
                f"{where}: {value} is outside {self.root}, the folder the data volume mirrors; "
                f"{self.how(local)}; or pass --data-root with a folder holding both"
            ) from None
        if not local.exists():
            raise DeployError(f"{where}: {value}: no such file or folder ({local})")
        remote = f"{DATA_MOUNT}/{relative.as_posix()}"
        self.uploads.append(Upload(local, remote))
        self.on_volume = True
        return remote

    def how(self, local: Path) -> str:
        remote = f"{DATA_MOUNT}/{local.name}"
        return (
            "the pods cannot reach it. Put it on the data volume and point the spec at its "
            f"copy (paths under {DATA_MOUNT}/ are used as they are): from a pod mounting the "
            f"claim {self.claim} at {DATA_MOUNT} (OUT/upload/pod.yaml), "
            f"`kubectl cp {shlex.quote(str(local))} POD:{remote}` and set the field to {remote}"
        )


def _on_data_volume(value: str) -> bool:
    path = PurePosixPath(value)
    return path.is_relative_to(DATA_MOUNT) and ".." not in path.parts


def _rewrite_data(raw: dict[str, Any], spec: RunSpec, paths: _PodPaths) -> None:
    data = raw["data"]
    hf = spec.data.format == "hf"
    if data.get("source") is not None and not (hf and not paths.is_local(data["source"])):
        data["source"] = paths.rewrite(data["source"], "data.source")
    for index, entry in enumerate(data.get("sources") or []):
        if entry.get("format") == "hf" and not paths.is_local(entry["path"]):
            continue  # a Hub dataset id: fetched by the pod
        entry["path"] = paths.rewrite(entry["path"], f"data.sources[{index}].path")


def _rewrite_eval_and_model(raw: dict[str, Any], paths: _PodPaths) -> None:
    evals = raw.get("eval") or {}
    if evals.get("golden"):
        evals["golden"] = paths.rewrite(evals["golden"], "eval.golden")
    if evals.get("frozen_set") not in (None, "auto", "none"):
        evals["frozen_set"] = paths.rewrite(evals["frozen_set"], "eval.frozen_set")
    base = raw["model"]["base"]
    if not base.startswith("packaged:") and (paths.is_local(base) or Path(base).is_absolute()):
        raw["model"]["base"] = paths.rewrite(base, "model.base")  # else a Hub id


#: Sections `honed run` does not read (the loop's inbox is the embedded loop's business).
_NOT_READ_BY_RUN = {"loop"}


def _check_no_local_paths(node: Any, paths: _PodPaths, where: str = "") -> None:
    """Any other field naming an existing file or folder of this machine (a task option, a
    field added later) would be a path the pods silently lack: refuse it by name."""
    if isinstance(node, dict):
        for key, value in node.items():
            if not where and key in _NOT_READ_BY_RUN:
                continue
            _check_no_local_paths(value, paths, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _check_no_local_paths(value, paths, f"{where}[{index}]")
    elif isinstance(node, str) and _names_a_local_path(node, paths):
        raise DeployError(f"{where}: {node} is a path on this machine; {paths.how(Path(node))}")


def _names_a_local_path(value: str, paths: _PodPaths) -> bool:
    if value.startswith(("packaged:", f"{DATA_MOUNT}/", f"{STATE_MOUNT}/")):
        return False  # in the image, or on a volume
    return ("/" in value or bool(Path(value).suffix)) and paths.is_local(value)


def _check_tracking(raw: dict[str, Any]) -> None:
    uri = (raw.get("registry") or {}).get("tracking_uri")
    if uri and not str(uri).startswith(_REMOTE_TRACKING):
        raise DeployError(
            f"registry.tracking_uri {uri}: a store on this machine, which the pods cannot "
            f"reach; unset it (the registry then lives on the state volume, {HONED_HOME}, "
            "where `honed deploy k8s` serves from) or use a remote MLflow server (http://...)"
        )


@dataclass(frozen=True)
class PodSpecFile:
    """The spec as the pods read it, its YAML, the files to upload, whether it reads the
    data volume."""

    spec: RunSpec
    text: str
    uploads: list[Upload]
    reads_data: bool


def pod_spec_for(spec_path: Path, options: TrainOptions) -> PodSpecFile:
    """The spec as the pods read it (local paths on the data volume, the run folder on the
    state volume) and the files to upload; DeployError for a path no pod can reach."""
    spec = load_spec(spec_path)
    raw = copy.deepcopy(yaml.safe_load(spec_path.read_text(encoding="utf-8")))
    paths = _PodPaths(spec.base_dir, options.data_root or spec.base_dir, options.data.name)
    _rewrite_data(raw, spec, paths)
    _rewrite_eval_and_model(raw, paths)
    _check_tracking(raw)
    _check_no_local_paths(raw, paths)
    raw["output_dir"] = f"{HONED_HOME}/runs/{spec.name}"  # with the registry, on the state volume
    rewritten = parse_spec(raw, source=f"{spec_path} (as rewritten for the pods)")
    header = (
        f"# {spec_path.name}, rewritten by `honed deploy train` for the pods: local paths\n"
        f"# on the data volume ({DATA_MOUNT}), the run folder on the state volume ({HONED_HOME}).\n"
    )
    return PodSpecFile(rewritten, header + to_yaml(raw), paths.uploads, paths.on_volume)


def _processes(spec: RunSpec, o: TrainOptions) -> int:
    if o.processes is not None:
        if o.processes < 1 or (o.gpus and o.processes > o.gpus):
            raise DeployError(f"--processes {o.processes}: 1 to --gpus ({o.gpus}) per pod")
        return o.processes
    if o.gpus:
        return o.gpus
    distributed = getattr(spec.training, "distributed", None)  # honed.train.distributed's
    wanted = getattr(distributed, "num_processes", None)
    return wanted if getattr(distributed, "strategy", "none") != "none" and wanted else 1


def _volumes(o: TrainOptions, name: str, data: bool) -> tuple[list[dict], list[dict]]:
    scratch, scratch_mounts = scratch_volumes()
    volumes = [
        {"name": "spec", "configMap": {"name": f"{name}-spec"}},
        claim_volume("state", o.state),
        # torch.distributed (NCCL, gloo) and DataLoader workers share tensors in /dev/shm,
        # which a container otherwise gets 64 MiB of.
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        *scratch,
    ]
    mounts = [
        {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
        {"name": "state", "mountPath": STATE_MOUNT},
        {"name": "dshm", "mountPath": "/dev/shm"},
        *scratch_mounts,
    ]
    if data:  # training only reads it: mounted read-only
        volumes.insert(2, claim_volume("data", o.data, read_only=True))
        mounts.insert(2, {"name": "data", "mountPath": DATA_MOUNT, "readOnly": True})
    return volumes, mounts


def _container(o: TrainOptions, container: str, command: list[str], mounts: list[dict]) -> dict:
    resources = container_resources(o.cpu, o.memory, o.gpus)
    env = [
        *state_env(),
        {"name": "TOKENIZERS_PARALLELISM", "value": "false"},
        # Caches that default to the (read-only) home folder: on the scratch volumes.
        {"name": "TRITON_CACHE_DIR", "value": "/home/honed/.cache/triton"},
        {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"},
    ]
    return {
        "name": container,
        "image": image_ref(o.image),
        "command": command,
        "workingDir": "/tmp",  # the root filesystem is read-only; every output has its path
        "env": env,
        "volumeMounts": mounts,
        "resources": resources,
        "securityContext": security_context(),
    }


def _template(o: TrainOptions, name: str, container: str, nproc: int, data: bool) -> dict:
    volumes, mounts = _volumes(o, name, data)
    command = launch_argv(SPEC_FILE, nproc, None)
    labels = _labels(name)
    return {
        "metadata": {"labels": labels},
        "spec": {
            "automountServiceAccountToken": False,  # training never calls the Kubernetes API
            "securityContext": pod_security_context(),
            "containers": [_container(o, container, command, mounts)],
            "volumes": volumes,
        },
    }


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": name}


def _workload(o: TrainOptions, name: str, nproc: int, data: bool) -> dict[str, Any]:
    meta = {
        "name": name,
        "labels": _labels(name),
        "annotations": {"honed.dev/spec": str(o.spec_path)},
    }
    if o.workers == 1:
        template = _template(o, name, "honed", nproc, data)
        template["spec"]["restartPolicy"] = "Never"  # a retry is a new pod: its logs are kept
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": meta,
            "spec": {"backoffLimit": o.backoff_limit, "template": template},
        }
    template = _template(o, name, PYTORCH_CONTAINER, nproc, data)
    # The operator's headless Service and MASTER_PORT use this port (its default, explicit).
    template["spec"]["containers"][0]["ports"] = [
        {"name": "pytorchjob-port", "containerPort": 23456}
    ]
    replicas = {"Master": 1, "Worker": o.workers - 1}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": meta,
        "spec": {
            "nprocPerNode": str(nproc),
            "runPolicy": {"backoffLimit": o.backoff_limit},
            "pytorchReplicaSpecs": {
                role: {"replicas": n, "restartPolicy": "OnFailure", "template": template}
                for role, n in replicas.items()
            },
        },
    }


def _upload_pod(o: TrainOptions, name: str) -> dict[str, Any]:
    """A pod that only mounts the data volume (writable), for `kubectl cp`; deleted after."""
    scratch, scratch_mounts = scratch_volumes()
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-upload",
            "labels": {**_labels(name), "app.kubernetes.io/component": "upload"},
        },
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": pod_security_context(),
            "restartPolicy": "Never",
            "activeDeadlineSeconds": 4 * 3600,  # forgotten, it goes away on its own
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "upload",
                    "image": image_ref(o.image),
                    "command": ["sleep", "14400"],
                    "volumeMounts": [{"name": "data", "mountPath": DATA_MOUNT}, *scratch_mounts],
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "128Mi"},
                        "limits": {"memory": "256Mi"},
                    },
                    "securityContext": security_context(),
                }
            ],
            "volumes": [claim_volume("data", o.data), *scratch],
        },
    }


def _check_options(o: TrainOptions) -> None:
    if o.workers < 1:
        raise DeployError(f"--workers {o.workers}: at least 1 pod")
    if o.gpus < 0:
        raise DeployError(f"--gpus {o.gpus}: 0 or more per pod")


def train_manifests(o: TrainOptions) -> TrainPlan:
    """The spec's ConfigMap, the Job or PyTorchJob, the claims to create, the upload pod;
    every pod template checked strictly against the Kubernetes schema."""
    _check_options(o)
    pod_spec = pod_spec_for(o.spec_path, o)
    name = o.name or k8s_name(pod_spec.spec.name)
    nproc = _processes(pod_spec.spec, o)
    data = pod_spec.reads_data
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-spec", "labels": _labels(name)},
        "data": {"spec.yaml": pod_spec.text},
    }
    workload = _workload(o, name, nproc, data)
    claims = [o.state, o.data] if data else [o.state]
    docs = [configmap, workload, *pvc_docs(claims)]
    plan = TrainPlan(name, docs, _upload_pod(o, name), pod_spec.uploads, pod_spec.spec, o)
    _check_templates(workload)
    return plan


def _check_templates(workload: dict[str, Any]) -> None:
    """A PyTorchJob's CRD schema does not refuse unknown pod fields (the API server prunes
    them): check each replica's template strictly, as the built-in PodTemplate kind."""
    from honed.deploy.validate import validate_manifests

    replicas = workload["spec"].get("pytorchReplicaSpecs", {})
    validate_manifests(
        [
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": f"{workload['metadata']['name']}-{role.lower()}"},
                "template": replica["template"],
            }
            for role, replica in replicas.items()
        ]
    )


def write_train(plan: TrainPlan, out: Path) -> list[Path]:
    """Validate every doc, then write them (the upload pod under OUT/upload/, which
    `kubectl apply -f OUT` does not apply); a refusal leaves nothing behind."""
    return write_manifests(plan.docs, out, extra=[(out / "upload" / "pod.yaml", plan.upload_pod)])


def upload_steps(plan: TrainPlan, out: Path) -> list[str]:
    """The shell commands that put the spec's files on the data volume, then start training."""
    pod = plan.upload_pod["metadata"]["name"]
    steps = []
    if plan.uploads:
        pvc = {doc["metadata"]["name"]: path for path, doc in manifest_files(plan.docs, out)}
        if plan.options.data.create:
            steps.append(f"kubectl apply -f {shlex.quote(str(pvc[plan.options.data.name]))}")
        steps += [
            f"kubectl apply -f {shlex.quote(str(out / 'upload' / 'pod.yaml'))}",
            f"kubectl wait --for=condition=Ready pod/{pod} --timeout=300s",
        ]
        folders = sorted({str(PurePosixPath(u.remote).parent) for u in plan.uploads} - {DATA_MOUNT})
        if folders:
            steps.append(f"kubectl exec {pod} -- mkdir -p {' '.join(folders)}")
        steps += [f"kubectl cp {shlex.quote(str(u.local))} {pod}:{u.remote}" for u in plan.uploads]
        steps.append(f"kubectl delete pod {pod}")
    steps.append(f"kubectl apply -f {shlex.quote(str(out))}")
    return steps
