"""`honed deploy pipeline`: the closed loop as a Kubeflow pipeline (kfp v2).

One container task per loop step (collect -> train -> gate -> canary -> decide), each running
`honed loop step STEP /spec/spec.yaml --round N` in honed's own image: the step code, state
and records are the embedded loop's (`honed loop run`), so a round can be started by the
pipeline and finished by `honed loop run --resume`, or the other way round. The data
scan runs inside the train step (`honed run` scans before it trains).

In the pod: the spec is a ConfigMap mounted at /spec (written next to the pipeline); the
state volume (HONED_HOME: registry, loop rounds, run folders) is the serving Deployment's
claim mounted where `honed deploy k8s` mounts it (/models), so the loop registers and
promotes in the registry the server reads. Each task passes the round number it ran to the
next one: the edges of the graph are those data dependencies, in loop order. Caching is off
(every step has side effects); the steps are idempotent, so retrying a failed run is safe.

kfp and kfp-kubernetes are optional (`pip install 'honed[kubeflow]'`), imported when used.
This module deliberately has no `from __future__ import annotations`: kfp reads the
component functions' annotations at runtime.
"""

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from honed.deploy.common import RUN_AS, DeployError, image_ref, k8s_name, to_yaml

#: Where the state claim is mounted: the same place as in the serving Deployment.
STATE_MOUNT = "/models"
STATE_HOME = f"{STATE_MOUNT}/.honed"
#: Hub downloads (base models) on the state volume, shared by the train and gate tasks.
HF_HOME = f"{STATE_MOUNT}/.cache/huggingface"
SPEC_MOUNT = "/spec"
SPEC_KEY = "spec.yaml"
#: The steps that load models (training, evaluating challenger and champion).
HEAVY_STEPS = ("train", "gate")
DEFAULT_TRIGGER = '{"kind": "pipeline", "reason": "Kubeflow pipeline run"}'


@dataclass(frozen=True)
class PipelineOptions:
    """What `honed deploy pipeline` renders. ``state_claim``: the existing
    PersistentVolumeClaim holding HONED_HOME (ReadWriteMany when the server mounts it too);
    ``spec_config_map``: the ConfigMap holding the spec (default ``<name>-loop-spec``);
    requests: ``cpu``/``memory`` for the light steps, ``train_*`` and ``gpus`` for train and
    gate; ``admin_key_secret``: a Secret whose ``admin-key`` becomes the loop's admin key
    (``loop.admin_key_env``) in the canary and decide tasks."""

    spec_path: Path
    image: str
    state_claim: str = "honed-models"
    spec_config_map: str | None = None
    cpu: str = "500m"
    memory: str = "2Gi"
    train_cpu: str = "4"
    train_memory: str = "16Gi"
    gpus: int = 0
    admin_key_secret: str | None = None


def _kfp() -> tuple[Any, Any]:
    try:
        from kfp import dsl, kubernetes
    except ImportError as err:
        raise DeployError(
            f"`honed deploy pipeline` needs kfp and kfp-kubernetes ({err.name} is missing): "
            "pip install 'honed[kubeflow]'"
        ) from None
    return dsl, kubernetes


def _step_component(step: str, image: str) -> Any:
    """A container component running one loop step in honed's image."""
    dsl, _ = _kfp()

    def component(
        loop_round: str,
        server: str,
        trigger: str,
        resolved_round: dsl.OutputPath(str),
        record: dsl.Output[dsl.Artifact],
    ):
        return dsl.ContainerSpec(
            image=image,
            command=["honed", "loop", "step", step, f"{SPEC_MOUNT}/{SPEC_KEY}"],
            args=[
                "--round",
                loop_round,
                "--server",
                server,
                "--trigger",
                trigger,
                "--output",
                record.path,
                "--round-output",
                resolved_round,
            ],
        )

    component.__name__ = component.__qualname__ = step  # the component's and task's name
    return dsl.container_component(component)


def _configure(task: Any, step: str, o: PipelineOptions, config_map: str, spec: Any) -> None:
    _, kubernetes = _kfp()
    heavy = step in HEAVY_STEPS
    task.set_display_name(step)
    task.set_caching_options(False)  # side effects: a cached step would skip its work
    task.set_cpu_request(o.train_cpu if heavy else o.cpu)
    task.set_memory_request(o.train_memory if heavy else o.memory)
    task.set_memory_limit(o.train_memory if heavy else o.memory)
    if heavy and o.gpus:
        task.set_accelerator_type("nvidia.com/gpu")
        task.set_accelerator_limit(o.gpus)
    task.set_env_variable("HONED_HOME", STATE_HOME)
    task.set_env_variable("HF_HOME", HF_HOME)
    kubernetes.mount_pvc(task, pvc_name=o.state_claim, mount_path=STATE_MOUNT)
    kubernetes.use_config_map_as_volume(task, config_map, mount_path=SPEC_MOUNT)
    kubernetes.set_security_context(
        task, run_as_user=RUN_AS, run_as_group=RUN_AS, run_as_non_root=True
    )
    if o.admin_key_secret and step in ("canary", "decide"):
        kubernetes.use_secret_as_env(
            task, o.admin_key_secret, secret_key_to_env={"admin-key": spec.loop.admin_key_env}
        )


def build_pipeline(
    spec_path: Path | str,
    image: str,
    state_claim: str = "honed-models",
    **options: Any,
) -> Any:
    """The loop's kfp pipeline (a GraphComponent; compile it with :func:`compile_pipeline`).
    Parameters at run time: ``loop_round`` (a number, or ``next``: the unfinished round if
    any, else a new one), ``server`` (the `honed serve` URL for the canary; empty: the gate
    decides) and ``trigger`` (JSON recorded as the round's trigger)."""
    from honed.pipeline.loop import STEPS
    from honed.spec import load_spec

    dsl, _ = _kfp()
    o = PipelineOptions(Path(spec_path), image, state_claim, **options)
    spec = load_spec(o.spec_path)
    config_map = o.spec_config_map or spec_config_map_name(spec)
    components = {step: _step_component(step, image) for step in STEPS}

    @dsl.pipeline(
        name=f"{k8s_name(spec.name)}-loop",
        description=f"honed closed loop for {spec.name}: {' -> '.join(STEPS)}",
    )
    def loop(loop_round: str = "next", server: str = "", trigger: str = DEFAULT_TRIGGER):
        current = loop_round
        for step in STEPS:
            task = components[step](loop_round=current, server=server, trigger=trigger)
            _configure(task, step, o, config_map, spec)
            current = task.outputs["resolved_round"]  # the next task's input: an edge

    return loop


def compile_pipeline(pipeline: Any, out: Path) -> Path:
    from kfp import compiler

    compiler.Compiler().compile(pipeline, package_path=str(out))
    return out


def validate_pipeline(text: str) -> list[dict[str, Any]]:
    """Check a compiled pipeline against kfp's own schemas (protobuf: unknown fields and
    wrong types refused): the PipelineSpec and each task's Kubernetes executor config.
    Returns the YAML documents."""
    import yaml
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb
    from kfp.pipeline_spec import pipeline_spec_pb2

    docs = [d for d in yaml.safe_load_all(text) if d]
    try:
        json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
        for platform in docs[1:]:
            json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
            executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
            for cfg in executors.values():
                json_format.ParseDict(cfg, k8s_pb.KubernetesExecutorConfig())
    except (json_format.ParseError, KeyError, IndexError) as err:
        raise DeployError(f"the compiled pipeline does not match kfp's schema: {err}") from err
    return docs


# --- the spec in the pod -------------------------------------------------------------------


def spec_config_map_name(spec: Any) -> str:
    return f"{k8s_name(spec.name)[:40]}-loop-spec"


def spec_config_map(spec: Any, text: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/name": "honed-loop", "app.kubernetes.io/instance": name},
        },
        "data": {SPEC_KEY: text},
    }


def _local_refs(spec: Any) -> list[tuple[str, str]]:
    """(field, path) of every local file or folder the loop's steps open."""
    refs: list[tuple[str, str]] = []
    data = spec.data
    if data.source is not None and data.format != "hf":
        refs.append(("data.source", data.source))
    for i, src in enumerate(data.sources or []):
        if src.format != "hf":
            refs.append((f"data.sources[{i}].path", src.path))
    if spec.eval.frozen_set not in ("auto", "none"):
        refs.append(("eval.frozen_set", spec.eval.frozen_set))
    if spec.eval.golden:
        refs.append(("eval.golden", spec.eval.golden))
    if spec.loop.inbox:
        refs.append(("loop.inbox", spec.loop.inbox))
    for name, url in (
        ("loop.request_log_url", spec.loop.request_log_url),
        ("registry.tracking_uri", spec.registry.tracking_uri),
    ):
        if url and url.startswith("sqlite:///"):
            refs.append((name, url.removeprefix("sqlite:///")))
    base = spec.model.base
    if base.startswith(("/", ".", "~")) or (spec.base_dir / base).exists():
        refs.append(("model.base", base))
    return refs


def check_reachable(spec: Any, claim: str) -> None:
    """A path the pods cannot open (this machine's folders, paths relative to the spec, which
    is a ConfigMap in the pod) is refused now, not as a failed task later."""
    bad = [
        f"{field} {path}"
        for field, path in _local_refs(spec)
        if not (path.startswith(f"{STATE_MOUNT}/") and ".." not in Path(path).parts)
    ]
    if bad:
        raise DeployError(
            f"{spec.path}: the pipeline's pods cannot reach {'; '.join(bad)}. Copy them onto "
            f"the state volume (claim {claim}, mounted at {STATE_MOUNT}) and use absolute "
            f"{STATE_MOUNT}/... paths in the spec (hub ids and hf datasets need nothing), or "
            "a PostgreSQL request log"
        )


def write_pipeline(o: PipelineOptions, out: Path) -> list[Path]:
    """The compiled pipeline at ``out`` and the spec's ConfigMap next to it, both validated
    before either is written (a refusal leaves nothing behind)."""
    from honed.deploy.validate import validate_manifests
    from honed.spec import load_spec

    spec = load_spec(o.spec_path)
    check_reachable(spec, o.state_claim)
    name = o.spec_config_map or spec_config_map_name(spec)
    config_map = spec_config_map(spec, o.spec_path.read_text(encoding="utf-8"), name)
    validate_manifests([config_map])
    options = {k: v for k, v in vars(o).items() if k not in ("spec_path", "image", "state_claim")}
    pipeline = build_pipeline(o.spec_path, o.image, o.state_claim, **options)
    with tempfile.TemporaryDirectory() as tmp:
        text = compile_pipeline(pipeline, Path(tmp) / "pipeline.yaml").read_text()
    validate_pipeline(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    cm_path = out.with_name(f"{out.stem}-spec-configmap.yaml")
    cm_path.write_text(to_yaml(config_map))
    return [out, cm_path]


# --- CLI -----------------------------------------------------------------------------------


def register(psub: argparse._SubParsersAction) -> None:
    p = psub.add_parser(
        "pipeline",
        help="the closed loop as a Kubeflow pipeline (kfp v2)",
        description="Compile the loop (collect -> train -> gate -> canary -> decide) into a "
        "Kubeflow Pipelines v2 YAML whose tasks run `honed loop step` in honed's image on "
        "the state volume, plus the spec's ConfigMap next to it. Run parameters: loop_round "
        "(a number or `next`), server (the `honed serve` URL for the canary), trigger (JSON).",
    )
    p.add_argument("spec", type=Path, help="YAML run spec (with a `loop:` section)")
    p.add_argument("--out", type=Path, required=True, help="pipeline YAML to write")
    p.add_argument("--image", default=None, help="container image (default: honed's, pinned)")
    p.add_argument("--image-tag", help="image tag or sha256:<digest> (default: honed version)")
    p.add_argument(
        "--state-claim",
        default="honed-models",
        help="existing PersistentVolumeClaim for HONED_HOME (default: the serving one, "
        "honed-models; ReadWriteMany when the server mounts it too)",
    )
    p.add_argument(
        "--spec-config-map", help="ConfigMap name for the spec (default: NAME-loop-spec)"
    )
    p.add_argument("--gpus", type=int, default=0, help="GPUs for the train and gate tasks")
    p.add_argument("--train-cpu", default="4", help="CPU request of train and gate")
    p.add_argument("--train-memory", default="16Gi", help="memory of train and gate")
    p.add_argument(
        "--admin-key-secret",
        help="Secret whose `admin-key` is the server's admin key (canary and decide tasks)",
    )
    p.set_defaults(func=_deploy_pipeline)


def _deploy_pipeline(args: argparse.Namespace) -> int:
    if args.gpus < 0:
        raise DeployError(f"--gpus {args.gpus}: a count, 0 or more")
    opts = PipelineOptions(
        spec_path=args.spec,
        image=image_ref(args.image, args.image_tag),
        state_claim=args.state_claim,
        spec_config_map=args.spec_config_map,
        gpus=args.gpus,
        train_cpu=args.train_cpu,
        train_memory=args.train_memory,
        admin_key_secret=args.admin_key_secret,
    )
    pipeline, config_map = write_pipeline(opts, args.out)
    print(pipeline)
    print(config_map)
    print(
        f"next: kubectl apply -f {config_map}; upload {pipeline} to Kubeflow Pipelines "
        f"(UI or kfp.Client().upload_pipeline); claim {opts.state_claim} must exist"
    )
    return 0
