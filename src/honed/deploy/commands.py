"""CLI: `honed deploy k8s|endpoint`, `honed push`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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
    k8s.add_argument("--no-check", action="store_true", help="do not resolve the ref now")
    k8s.set_defaults(func=_deploy_k8s)
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
    from honed.deploy import kfp_loop  # light: kfp is imported when the command runs

    kfp_loop.register(psub)


def _check_ref(ref: str) -> None:
    from honed.serve.engine.loading import resolve_folder

    resolve_folder(ref)  # a clear error now beats a crash-looping pod later


def _deploy_k8s(args: argparse.Namespace) -> int:
    from honed.deploy.common import image_ref, k8s_name
    from honed.deploy.serving import DeployOptions, check_keys, write_k8s

    opts = DeployOptions(
        model_ref=args.model_ref,
        name=args.name or k8s_name(args.model_ref),
        image=image_ref(args.image, args.image_tag),
        replicas=args.replicas,
        max_replicas=args.max_replicas,
        gpus=args.gpus,
        keys_secret=args.keys_secret,
        external_keys=args.external_keys,
    )
    check_keys(opts)
    if not args.no_check:
        _check_ref(args.model_ref)
    for path in write_k8s(opts, args.out):
        print(path)
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
