"""CLI: `honed deploy k8s|train|endpoint`, `honed push`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from honed.deploy.volumes import Claim


def register(sub: argparse._SubParsersAction) -> None:
    _register_deploy(sub)
    push = sub.add_parser(
        "push",
        help="publish a registered model or adapter to the HF Hub",
        description="Upload the model folder (weights, tokenizer, card, lineage) to a "
        "Hugging Face Hub repo, created private unless --public.",
    )
    push.add_argument("ref", help="folder, NAME@ALIAS or NAME/VERSION")
    push.add_argument("--repo", required=True, help="hub repo id, e.g. me/financial-sentiment")
    push.add_argument("--public", action="store_true", help="create the repo public")
    push.set_defaults(func=_push)


def _register_deploy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deploy",
        help="deployment configs for a registered model",
        description="Write deployment manifests that run `honed serve` for a model.",
    )
    psub = p.add_subparsers(dest="deploy_command", metavar="TARGET", required=True)
    k8s = psub.add_parser(
        "k8s",
        help="Kubernetes Deployment + Service + HPA",
        description="Write Kubernetes manifests (Deployment, Service, HorizontalPodAutoscaler) "
        "serving the model with health probes.",
    )
    k8s.add_argument("model_ref", help="NAME@ALIAS, NAME/VERSION or folder")
    k8s.add_argument("--out", type=Path, required=True, help="output folder")
    k8s.add_argument("--name", help="Kubernetes name (default: from the model ref)")
    k8s.add_argument(
        "--image", default=None, help="container image (default: honed-serve at this version)"
    )
    k8s.add_argument("--image-tag", help="image tag or sha256:<digest> (default: honed version)")
    k8s.add_argument("--replicas", type=int, default=1, help="minimum replicas")
    k8s.add_argument("--max-replicas", type=int, default=4, help="HPA maximum")
    k8s.add_argument("--gpus", type=int, default=0, help="GPUs per pod")
    k8s.add_argument("--keys-secret", help="Secret with keys.yaml and probe-key")
    k8s.add_argument(
        "--external-keys",
        action="store_true",
        help="API keys reach the pod another way (HONED_SERVE_API_KEYS_FILE, HONED_PROBE_KEY)",
    )
    k8s.add_argument(
        "--rate-limit-storage",
        metavar="URI",
        help="shared store for per-key rate limits across replicas (redis://HOST:6379/0)",
    )
    k8s.add_argument(
        "--no-check",
        action="store_true",
        help="do not resolve the ref in this machine's registry (e.g. a model registered on "
        "the cluster by `honed deploy train`)",
    )
    _claim_flags(k8s, "state", "claim", "20Gi", "the state volume (HONED_HOME: the registry)")
    _storage_flags(k8s)
    k8s.set_defaults(func=_deploy_k8s)
    _register_train(psub)
    ep = psub.add_parser(
        "endpoint",
        help="HF Inference Endpoints or SageMaker config",
        description="Write the JSON config of a Hugging Face Inference Endpoint or a SageMaker "
        "endpoint serving the model.",
    )
    ep.add_argument("model_ref", help="NAME@ALIAS, NAME/VERSION or folder")
    ep.add_argument("--target", choices=["hf", "sagemaker"], required=True, help="platform")
    ep.add_argument("--out", type=Path, required=True, help="output JSON file")
    ep.add_argument(
        "--hub-repo",
        "--repo",
        dest="hub_repo",
        help="hf: hub repo `honed push` uploaded the model to (default: the recorded push)",
    )
    ep.add_argument("--revision", help="hf: hub revision (default: the pushed commit, or main)")
    ep.add_argument(
        "--model-data",
        help="sagemaker: s3://BUCKET/KEY/model.tar.gz; the archive is written next to --out",
    )
    ep.add_argument("--image", default=None, help="container image")
    ep.add_argument("--image-tag", help="image tag or sha256:<digest> (default: honed version)")
    ep.add_argument("--instance", help="instance type")
    ep.set_defaults(func=_deploy_endpoint)
    # Light modules: kfp and the schemas are imported when their command runs.
    from honed.deploy import kfp_loop, kserve

    kserve.register(psub)
    kfp_loop.register(psub)


def _claim_flags(
    parser: argparse.ArgumentParser, volume: str, alias: str | None, size: str, what: str
) -> None:
    """--VOLUME-claim NAME (created by the output) | --existing-VOLUME-claim NAME, size,
    storage class, access mode; `alias` adds --ALIAS / --existing-ALIAS spellings."""
    group = parser.add_mutually_exclusive_group()
    names = [f"--{volume}-claim", *([f"--{alias}"] if alias else [])]
    group.add_argument(
        *names,
        dest=f"{volume}_claim",
        metavar="NAME",
        help=f"claim of {what}, created by the output",
    )
    names = [f"--existing-{volume}-claim", *([f"--existing-{alias}"] if alias else [])]
    group.add_argument(
        *names,
        dest=f"existing_{volume}_claim",
        metavar="NAME",
        help=f"an existing claim of {what}: mounted, not created",
    )
    sizes = [f"--{volume}-size", *(["--size"] if alias else [])]
    parser.add_argument(*sizes, dest=f"{volume}_size", default=size, help=f"size (default {size})")


def _storage_flags(parser: argparse.ArgumentParser) -> None:
    from honed.deploy.volumes import ACCESS_MODES

    parser.add_argument(
        "--storage-class", help="StorageClass of created claims (default: the cluster's)"
    )
    parser.add_argument(
        "--access-mode",
        choices=ACCESS_MODES,
        help="of created claims (default: ReadWriteMany when pods on several nodes share "
        "them, else ReadWriteOnce)",
    )


def _claim(args: argparse.Namespace, volume: str, default: str, shared: bool) -> Claim:
    from honed.deploy.volumes import claim_from_flags

    return claim_from_flags(
        getattr(args, f"{volume}_claim"),
        getattr(args, f"existing_{volume}_claim"),
        default,
        size=getattr(args, f"{volume}_size"),
        storage_class=args.storage_class,
        access_mode=args.access_mode,
        shared=shared,
    )


def _register_train(psub: argparse._SubParsersAction) -> None:
    train = psub.add_parser(
        "train",
        help="Kubernetes Job / Kubeflow PyTorchJob running `honed run SPEC`",
        description="Write the manifests that train SPEC on Kubernetes: a Job (one pod) or a "
        "Kubeflow Training Operator PyTorchJob (--workers > 1), running the same launch "
        "command in honed's image, the spec in a ConfigMap, its data on the data volume and "
        "HONED_HOME (registry, run folders) on the state volume that `honed deploy k8s` "
        "serves from. Prints the steps that upload the data.",
    )
    train.add_argument("spec", type=Path, help="run spec (YAML)")
    train.add_argument("--out", type=Path, required=True, help="output folder")
    train.add_argument("--name", help="Kubernetes name (default: from the spec's name)")
    train.add_argument("--workers", type=int, default=1, help="pods (more than 1: PyTorchJob)")
    train.add_argument("--gpus", type=int, default=0, help="GPUs per pod (nvidia.com/gpu)")
    train.add_argument(
        "--processes", type=int, help="training processes per pod (default: one per GPU)"
    )
    train.add_argument("--cpu", default="4", help="CPU request per pod")
    train.add_argument("--memory", default="16Gi", help="memory request and limit per pod")
    train.add_argument(
        "--image", default=None, help="container image (default: honed-serve at this version)"
    )
    train.add_argument("--image-tag", help="image tag or sha256:<digest> (default: honed version)")
    train.add_argument(
        "--data-root",
        type=Path,
        help="local folder the data volume mirrors (default: the spec's folder); the spec's "
        "relative paths must lie under it",
    )
    _claim_flags(train, "data", None, "10Gi", "the data volume (the spec's files)")
    _claim_flags(train, "state", None, "20Gi", "the state volume (HONED_HOME: the registry)")
    _storage_flags(train)
    train.set_defaults(func=_deploy_train)


def _check_ref(ref: str) -> None:
    from honed.deploy.common import DeployError
    from honed.errors import HonedError
    from honed.serve.engine.loading import resolve_folder

    try:
        resolve_folder(ref)  # a clear error now beats a crash-looping pod later
    except HonedError as err:
        raise DeployError(
            f"{err} (checked in this machine's registry; if {ref} is registered on the "
            "cluster's state volume, e.g. by `honed deploy train`, pass --no-check)"
        ) from None


def _deploy_k8s(args: argparse.Namespace) -> int:
    from honed.deploy.common import image_ref, k8s_name
    from honed.deploy.serving import DeployOptions, check_keys, write_k8s
    from honed.deploy.volumes import STATE_CLAIM, check_pod_ref

    claim = _claim(args, "state", STATE_CLAIM, max(args.replicas, args.max_replicas) > 1)
    opts = DeployOptions(
        model_ref=args.model_ref,
        name=args.name or k8s_name(args.model_ref),
        image=image_ref(args.image, args.image_tag),
        replicas=args.replicas,
        max_replicas=args.max_replicas,
        gpus=args.gpus,
        keys_secret=args.keys_secret,
        external_keys=args.external_keys,
        volume_claim=claim.name,
        create_claim=claim.create,
        claim_size=claim.size,
        storage_class=claim.storage_class,
        access_mode=claim.access_mode,
        rate_limit_storage=args.rate_limit_storage,
    )
    check_keys(opts)
    check_pod_ref(args.model_ref, claim.name)  # before the local check: a folder is never ok
    if not args.no_check:
        _check_ref(args.model_ref)
    for path in write_k8s(opts, args.out):
        print(path)
    _warn_unshared_limits(opts)
    return 0


def _warn_unshared_limits(opts) -> None:
    from honed.deploy.serving import shared_limits_warning

    if warning := shared_limits_warning(opts):
        print(warning, file=sys.stderr)


def _deploy_train(args: argparse.Namespace) -> int:
    from honed.deploy import training
    from honed.deploy.common import image_ref
    from honed.deploy.volumes import DATA_CLAIM, STATE_CLAIM

    shared = args.workers > 1
    opts = training.TrainOptions(
        spec_path=args.spec,
        name=args.name,
        image=image_ref(args.image, args.image_tag),
        workers=args.workers,
        gpus=args.gpus,
        processes=args.processes,
        cpu=args.cpu,
        memory=args.memory,
        data=_claim(args, "data", DATA_CLAIM, shared),
        state=_claim(args, "state", STATE_CLAIM, shared),
        data_root=args.data_root,
    )
    plan = training.train_manifests(opts)
    for path in training.write_train(plan, args.out):
        print(path)
    print("\nto train:")
    for step in training.upload_steps(plan, args.out):
        print(f"  {step}")
    registry = plan.spec.registry
    if registry.enabled:
        ref = f"{plan.spec.registered_name()}@{registry.alias_on_register or 'ALIAS'}"
        print(
            f"then serve it from the same state volume: honed deploy k8s {ref} --out DIR "
            f"--existing-claim {opts.state.name} --no-check"
        )
    return 0


def _deploy_endpoint(args: argparse.Namespace) -> int:
    from honed.deploy import common, serving
    from honed.serve.engine.loading import resolve_folder

    folder = resolve_folder(args.model_ref)  # a clear error now beats a crash-looping endpoint
    source = serving.endpoint_source(
        args.target, args.model_ref, folder, args.hub_repo, args.revision, args.model_data
    )
    cfg = serving.endpoint_config(
        args.target,
        serving.served_name(args.model_ref, folder),
        common.k8s_name(args.model_ref),
        source,
        common.image_ref(args.image, args.image_tag),
        args.instance,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(cfg, indent=2) + "\n")
    print(args.out)
    if source.model_data:
        tarball = serving.write_model_tarball(folder, args.out.with_name("model.tar.gz"))
        print(f"upload before creating the model: aws s3 cp {tarball} {source.model_data}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from honed.deploy.serving import check_online, push, record_push
    from honed.errors import HonedError
    from honed.serve.engine.loading import resolve_folder

    check_online()  # before touching the registry: offline must fail at once
    folder = resolve_folder(args.ref)
    url = push(folder, args.repo, private=not args.public)
    print(url)
    try:
        record_push(args.ref, args.repo, url)  # `honed deploy endpoint --target hf` reads it
    except HonedError as err:  # the upload happened: say what was not recorded, do not fail
        print(f"warning: push not recorded in the registry: {err}", file=sys.stderr)
    return 0
