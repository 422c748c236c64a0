"""`honed deploy kserve`: a KServe `InferenceService` (serving.kserve.io/v1beta1) running
`honed serve` as a custom predictor container, the cluster-native alternative to honed's own
canary (`POST /admin/canary`).

The predictor is the pod `honed deploy k8s` renders (serving.py), adapted to KServe: the
container is `kserve-container` with one port (8000, named `http1` as Knative wants), liveness
on `/healthz`, readiness on `/readyz` from inside the pod with the probe key (keys are always
on: the pods listen on 0.0.0.0), API keys from a Secret (or `--external-keys`), HONED_HOME on
the models volume claim (rendered as a PersistentVolumeClaim, or `--existing-claim`), the
restricted security context (the API token off through the pods' ServiceAccount, as Knative
refuses the pod field), and min/max replicas with a scale metric. The pods resolve the
model ref from the registry on that volume, so the ref must be a registry ref (NAME@ALIAS or
NAME/VERSION); a folder on this machine is refused.

Canary rollout (Knative deployment mode: KServe splits traffic between Knative revisions):

1. apply the champion: `honed deploy kserve fin/3 --out isvc/ ...; kubectl apply -f isvc/`
2. apply the challenger: `honed deploy kserve fin/3 --canary fin/4 --canary-percent 10
   --out isvc/ ...; kubectl apply -f isvc/`. The predictor now runs `honed serve fin/4` and
   `canaryTrafficPercent: 10` sends 10 % of the requests to that latest revision while 90 %
   stay on the previous ready revision (the champion). Raise the percent by applying again.
3. promote: apply the challenger without `--canary` (`honed deploy kserve fin/4 ...`, no
   canaryTrafficPercent) or with `--canary-percent 100`; roll back: apply the champion again
   (`honed deploy kserve fin/3 ...`).

The InferenceService is named after the registered model (`fin`), not the ref, so every step
updates the same resource. Pin versions (NAME/VERSION): a KServe revision should not change
under its traffic share, while a server started on NAME@ALIAS follows the alias by itself.
honed's own canary splits inside one server process (per-caller sticky arms, shadow mode,
arm-labelled request logs that `honed monitor canary` compares, hot adapter swaps); KServe's
splits between pods at the ingress, per request, with each revision scaled on its own: use it
when a challenger needs its own pods (a new generative base) or the platform owns rollouts.
Knative mode needs the Knative feature flags `kubernetes.podspec-securitycontext`,
`kubernetes.podspec-persistent-volume-claim` and `kubernetes.podspec-persistent-volume-write`
enabled (config-features; Knative 1.10 or later). `--deployment-mode Standard` renders a plain
Deployment-backed service (no revisions, so no canary).
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from honed.deploy.common import PORT, DeployError, image_ref, k8s_name
from honed.deploy.manifests import write_manifests
from honed.deploy.serving import DeployOptions, _pod_spec, check_keys, shared_limits_warning
from honed.deploy.volumes import Claim, check_pod_ref, pvc_docs

API_VERSION = "serving.kserve.io/v1beta1"
#: The container name KServe gives (and looks for in) a custom predictor.
CONTAINER = "kserve-container"
#: KServe's names; the legacy `Serverless` / `RawDeployment` still work on older releases.
KNATIVE_MODES = ("Knative", "Serverless")
STANDARD_MODES = ("Standard", "RawDeployment")
#: Metrics KServe scales on: Knative's pod autoscaler (requests in flight, requests per
#: second) or an HPA (resource utilisation, `serving.kserve.io/autoscalerClass: hpa`).
KPA_METRICS = ("concurrency", "rps")
HPA_METRICS = ("cpu", "memory")
_ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Fields of the pod `deploy k8s` renders that Knative's revision spec refuses.
_KNATIVE_DISALLOWED_POD = ("automountServiceAccountToken", "terminationGracePeriodSeconds")
# The security-context fields Knative (1.10 and later) lets a revision set; it refuses any
# other (`privileged`, `fsGroupChangePolicy`, ...) rather than ignore it.
_KNATIVE_POD_SECURITY = (
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "fsGroup",
    "supplementalGroups",
    "seccompProfile",
)
_KNATIVE_CONTAINER_SECURITY = (
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "readOnlyRootFilesystem",
    "allowPrivilegeEscalation",
    "capabilities",
    "seccompProfile",
)
#: The pods' ServiceAccount: it turns the token off for them, which Knative mode cannot do in
#: the pod spec (the server never calls the Kubernetes API).
SERVICE_ACCOUNT = "honed-serve"


@dataclass(frozen=True)
class KServeOptions:
    model_ref: str  # the champion: the running predictor unless `canary_ref` is set
    name: str
    image: str | None = None  # None: IMAGE_REPO at this honed version (see image_ref)
    keys_secret: str | None = None
    external_keys: bool = False  # keys reach the pod another way (see DeployOptions)
    rate_limit_storage: str | None = None  # shared rate limits (see DeployOptions)
    gpus: int = 0
    cpu: str = "2"
    memory: str = "4Gi"
    min_replicas: int = 1  # 0: scale to zero (Knative mode)
    max_replicas: int = 4
    scale_metric: str | None = None  # None: concurrency (Knative) or cpu (Standard)
    scale_target: int | None = None  # None: 8 requests in flight, or 70 % utilisation
    canary_ref: str | None = None  # the challenger the predictor runs when set
    canary_percent: int | None = None  # traffic to the latest revision (the challenger)
    deployment_mode: str = "Knative"
    claim: str = "honed-models"  # the models volume claim (same as `deploy k8s`)
    existing_claim: bool = False  # the claim exists: do not render it
    storage_size: str = "20Gi"
    storage_class: str | None = None

    @property
    def knative(self) -> bool:
        return self.deployment_mode in KNATIVE_MODES

    @property
    def served_ref(self) -> str:
        return self.canary_ref or self.model_ref

    @property
    def metric(self) -> str:
        return self.scale_metric or ("concurrency" if self.knative else "cpu")


def _check_options(o: KServeOptions) -> None:
    check_keys(_deploy_options(o))
    check_pod_ref(o.model_ref, o.claim)
    if o.canary_ref:
        check_pod_ref(o.canary_ref, o.claim)
    if (o.canary_ref is None) != (o.canary_percent is None):
        raise DeployError("--canary REF and --canary-percent N go together")
    if o.canary_percent is not None and not 0 <= o.canary_percent <= 100:
        raise DeployError(f"--canary-percent {o.canary_percent}: a percentage, 0 to 100")
    if o.canary_ref and not o.knative:
        raise DeployError(
            f"--canary needs --deployment-mode Knative: KServe splits traffic between Knative "
            f"revisions, which {o.deployment_mode} mode does not have"
        )
    if not 0 <= o.min_replicas <= o.max_replicas or o.max_replicas < 1:
        raise DeployError(
            f"replicas: need 0 <= --min-replicas ({o.min_replicas}) <= --max-replicas "
            f"({o.max_replicas}) and --max-replicas >= 1"
        )
    if o.min_replicas == 0 and not o.knative:
        raise DeployError("--min-replicas 0 (scale to zero) needs --deployment-mode Knative")
    if o.metric in KPA_METRICS and not o.knative:
        raise DeployError(f"--scale-metric {o.metric} needs Knative mode; use cpu or memory")
    if not _ISVC_NAME.match(o.name):
        raise DeployError(
            f"--name {o.name!r}: an InferenceService name is lower case letters, digits and "
            "'-', starting with a letter"
        )


def _deploy_options(o: KServeOptions) -> DeployOptions:
    return DeployOptions(
        model_ref=o.served_ref,
        name=o.name,
        image=o.image,
        replicas=o.min_replicas,
        max_replicas=o.max_replicas,
        cpu=o.cpu,
        memory=o.memory,
        gpus=o.gpus,
        volume_claim=o.claim,
        keys_secret=o.keys_secret,
        external_keys=o.external_keys,
        rate_limit_storage=o.rate_limit_storage,
    )


def _only(fields: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if key in allowed}


def _kserve_container(container: dict[str, Any], knative: bool) -> dict[str, Any]:
    """`deploy k8s`'s container with KServe's conventions: its name, one port named http1
    (Knative routes to it), probes on that port or exec (Knative refuses other ports)."""
    c = copy.deepcopy(container)
    c["name"] = CONTAINER
    c["ports"] = [{"name": "http1", "containerPort": PORT, "protocol": "TCP"}]
    c["livenessProbe"]["httpGet"]["port"] = PORT
    # /healthz answers as soon as the server is up (the model loads in the background), so
    # liveness needs no startup probe, which older Knative releases refuse.
    c.pop("startupProbe", None)
    if knative:  # e.g. no `privileged` field: unset, a container is not privileged
        c["securityContext"] = _only(c["securityContext"], _KNATIVE_CONTAINER_SECURITY)
    return c


def _predictor(o: KServeOptions) -> dict[str, Any]:
    pod = _pod_spec(_deploy_options(o))
    pod["containers"] = [_kserve_container(c, o.knative) for c in pod["containers"]]
    pod["serviceAccountName"] = SERVICE_ACCOUNT
    if o.knative:
        for field in _KNATIVE_DISALLOWED_POD:
            pod.pop(field, None)
        pod["securityContext"] = _only(pod["securityContext"], _KNATIVE_POD_SECURITY)
    predictor: dict[str, Any] = {
        "minReplicas": o.min_replicas,
        "maxReplicas": o.max_replicas,
        "scaleMetric": o.metric,
        "scaleTarget": o.scale_target or (8 if o.metric in KPA_METRICS else 70),
    }
    if o.canary_percent is not None:
        predictor["canaryTrafficPercent"] = o.canary_percent
    return {**predictor, **pod}


def inference_service(o: KServeOptions) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "honed-serve", "app.kubernetes.io/instance": o.name}
    annotations = {
        "serving.kserve.io/deploymentMode": o.deployment_mode,
        "honed.dev/model-ref": o.model_ref,
    }
    if o.metric in HPA_METRICS:
        annotations["serving.kserve.io/autoscalerClass"] = "hpa"
    if o.canary_ref:
        annotations["honed.dev/canary-ref"] = o.canary_ref
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": {"name": o.name, "labels": labels, "annotations": annotations},
        "spec": {"predictor": _predictor(o)},
    }


def models_claim(o: KServeOptions) -> Claim:
    """The models volume (HONED_HOME: the registry the pods resolve refs from), created unless
    `--existing-claim` names one. ReadWriteMany: the replicas of both revisions mount it."""
    create = not o.existing_claim
    return Claim(o.claim, create, o.storage_size, o.storage_class, "ReadWriteMany")


def service_account() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": SERVICE_ACCOUNT, "labels": {"app.kubernetes.io/name": "honed-serve"}},
        "automountServiceAccountToken": False,
    }


def kserve_manifests(o: KServeOptions) -> list[dict[str, Any]]:
    """The InferenceService, its ServiceAccount (no API token), and the models
    PersistentVolumeClaim unless it exists."""
    _check_options(o)
    return [inference_service(o), service_account(), *pvc_docs([models_claim(o)])]


def write_kserve(o: KServeOptions, out: Path) -> list[Path]:
    return write_manifests(kserve_manifests(o), out)  # validated before any file is written


def model_name(ref: str) -> str:
    """The InferenceService name: the registered model's (`fin` for fin@champion, fin/4), so
    the champion, the canary and the promotion all update one resource."""
    return k8s_name(ref.removeprefix("models:/").split("@")[0].split("/")[0])


_DESCRIPTION = """\
Write a KServe InferenceService (serving.kserve.io/v1beta1) whose predictor runs
`honed serve REF` from honed's image (port 8000, /healthz liveness, /readyz readiness with
the probe key), with API keys from a Secret and HONED_HOME on the models volume claim.
MODEL_REF is a registry ref the pods resolve from that volume (NAME/VERSION preferred).

Canary rollout (Knative mode): 1) apply the champion (`deploy kserve fin/3`); 2) apply the
challenger with `--canary fin/4 --canary-percent 10`: the predictor runs fin/4 and KServe
sends 10% to that latest revision, the rest to the previous ready one; 3) promote by
applying fin/4 without --canary (or with --canary-percent 100), roll back by applying fin/3.
honed's own canary (POST /admin/canary) splits inside one server instead, with sticky arms,
shadow mode and per-arm request logs. Knative mode needs Knative's config-features
kubernetes.podspec-securitycontext, kubernetes.podspec-persistent-volume-claim and
kubernetes.podspec-persistent-volume-write enabled; --deployment-mode Standard (a Deployment,
no canary) does not."""


def register(psub: argparse._SubParsersAction) -> None:
    """`honed deploy kserve`: the sub-parser of `honed deploy`."""
    p = psub.add_parser(
        "kserve",
        help="KServe InferenceService (canaryTrafficPercent for a challenger)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model_ref", help="the champion: NAME/VERSION or NAME@ALIAS (registry)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--name", help="InferenceService name (default: the registered model's)")
    p.add_argument("--image", help="container image (default: honed-serve at this version)")
    p.add_argument("--image-tag", help="image tag or sha256:<digest> (default: honed version)")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--keys-secret", help="Secret with keys.yaml and probe-key")
    keys.add_argument(
        "--external-keys",
        action="store_true",
        help="API keys reach the pod another way (HONED_SERVE_API_KEYS_FILE, HONED_PROBE_KEY)",
    )
    p.add_argument(
        "--rate-limit-storage",
        metavar="URI",
        help="shared store for per-key rate limits across replicas (redis://HOST:6379/0)",
    )
    p.add_argument("--canary", metavar="REF", help="challenger the predictor runs now")
    p.add_argument(
        "--canary-percent",
        type=int,
        metavar="N",
        help="canaryTrafficPercent: share of requests to the challenger's revision (0-100)",
    )
    p.add_argument("--gpus", type=int, default=0, help="GPUs per pod (nvidia.com/gpu)")
    p.add_argument("--min-replicas", type=int, default=1, help="0 scales to zero (Knative)")
    p.add_argument("--max-replicas", type=int, default=4, help="autoscaling maximum")
    p.add_argument(
        "--scale-metric",
        choices=[*KPA_METRICS, *HPA_METRICS],
        help="autoscaling metric (default: concurrency in Knative mode, cpu in Standard)",
    )
    p.add_argument("--scale-target", type=int, help="target per pod (default: 8 or 70 %%)")
    p.add_argument(
        "--deployment-mode",
        choices=[*KNATIVE_MODES, *STANDARD_MODES],
        default="Knative",
        help="KServe deployment mode (Knative: revisions and canary; Standard: a Deployment)",
    )
    claim = p.add_mutually_exclusive_group()
    claim.add_argument("--claim", default="honed-models", help="models volume claim to create")
    claim.add_argument("--existing-claim", metavar="NAME", help="use this existing claim")
    p.add_argument("--storage-size", default="20Gi", help="size of the claim created")
    p.add_argument("--storage-class", help="storage class of the claim (ReadWriteMany)")
    p.set_defaults(func=_deploy_kserve)


def _deploy_kserve(args: argparse.Namespace) -> int:
    opts = KServeOptions(
        model_ref=args.model_ref,
        name=args.name or model_name(args.model_ref),
        image=image_ref(args.image, args.image_tag),
        keys_secret=args.keys_secret,
        external_keys=args.external_keys,
        rate_limit_storage=args.rate_limit_storage,
        gpus=args.gpus,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        scale_metric=args.scale_metric,
        scale_target=args.scale_target,
        canary_ref=args.canary,
        canary_percent=args.canary_percent,
        deployment_mode=args.deployment_mode,
        claim=args.existing_claim or args.claim,
        existing_claim=args.existing_claim is not None,
        storage_size=args.storage_size,
        storage_class=args.storage_class,
    )
    for path in write_kserve(opts, args.out):
        print(path)
    if warning := shared_limits_warning(_deploy_options(opts)):
        print(warning, file=sys.stderr)
    return 0
