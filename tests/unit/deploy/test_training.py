"""`honed deploy train`: a Job or a PyTorchJob running the spec's `honed run`, its data and
state on volumes the output creates (or names), every manifest schema-valid."""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path

import pytest
import yaml

from honed.cli import main
from honed.deploy import training
from honed.deploy.common import IMAGE_REPO, RUN_AS, DeployError
from honed.deploy.serving import DeployOptions, k8s_manifests
from honed.deploy.training import SPEC_FILE, TrainOptions, train_manifests
from honed.deploy.validate import ManifestInvalidError, crd_schema_path, validate_manifests
from honed.deploy.volumes import DATA_MOUNT, HONED_HOME, Claim
from honed.spec import parse_spec

pytest.importorskip("kubernetes_validate")  # a dev dependency: the offline built-in schemas


def _spec(folder: Path, **changes) -> Path:
    """A spec folder: spec.yaml reading data/train.jsonl and a golden file beside it."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "data" / "train.jsonl").write_text('{"text": "up", "label": "pos"}\n')
    (folder / "golden.jsonl").write_text('{"text": "down", "label": "neg"}\n')
    spec = {
        "name": "fin-sent",
        "task": "classification",
        "model": {"base": "packaged:all-minilm-l6-v2"},
        "data": {"source": "data/train.jsonl", "labels": ["neg", "pos"]},
        "eval": {"golden": "golden.jsonl"},
        "registry": {"alias_on_register": "challenger"},
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            spec.setdefault(section, {})[field] = value
        else:
            spec[section] = value
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for doc in docs:
        out.setdefault(doc["kind"], []).append(doc)
    return out


def _pod_spec(plan) -> dict:
    (job,) = [d for d in plan.docs if d["kind"] in ("Job", "PyTorchJob")]
    if job["kind"] == "Job":
        return job["spec"]["template"]["spec"]
    return job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]


def _pod_spec_file(plan) -> dict:
    (cm,) = [d for d in plan.docs if d["kind"] == "ConfigMap"]
    return yaml.safe_load(cm["data"]["spec.yaml"])


def test_one_pod_is_a_job_running_the_launch_command(tmp_path):
    plan = train_manifests(TrainOptions(_spec(tmp_path)))
    validate_manifests([*plan.docs, plan.upload_pod])  # built-in kinds, strictly
    kinds = _by_kind(plan.docs)
    assert set(kinds) == {"ConfigMap", "Job", "PersistentVolumeClaim"}
    assert {p["metadata"]["name"] for p in kinds["PersistentVolumeClaim"]} == {
        "honed-models",
        "honed-data",
    }
    job = kinds["Job"][0]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 3
    (c,) = pod["containers"]
    assert c["command"] == training.launch_argv(SPEC_FILE, 1, None)
    assert c["command"][-3:] == ["honed", "run", SPEC_FILE]
    assert c["image"] == f"{IMAGE_REPO}:{importlib.metadata.version('honed')}"
    assert "nvidia.com/gpu" not in c["resources"]["limits"]


def test_the_spec_reads_its_files_on_the_data_volume_and_runs_on_the_state_volume(tmp_path):
    plan = train_manifests(TrainOptions(_spec(tmp_path)))
    spec = _pod_spec_file(plan)
    parse_spec(spec)  # still a valid spec
    assert spec["data"]["source"] == f"{DATA_MOUNT}/data/train.jsonl"
    assert spec["eval"]["golden"] == f"{DATA_MOUNT}/golden.jsonl"
    assert spec["output_dir"] == f"{HONED_HOME}/runs/fin-sent"
    assert {(u.local, u.remote) for u in plan.uploads} == {
        (tmp_path / "data" / "train.jsonl", f"{DATA_MOUNT}/data/train.jsonl"),
        (tmp_path / "golden.jsonl", f"{DATA_MOUNT}/golden.jsonl"),
    }
    pod = _pod_spec(plan)
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts[DATA_MOUNT]["readOnly"] is True
    assert volumes[mounts[DATA_MOUNT]["name"]]["persistentVolumeClaim"]["claimName"] == "honed-data"
    assert volumes[mounts["/etc/honed"]["name"]]["configMap"]["name"] == "fin-sent-spec"
    # The state volume is the one `honed deploy k8s` serves from: same claim, same HONED_HOME.
    served = k8s_manifests(DeployOptions("fin-sent@challenger", "fin", external_keys=True))[0]
    served_pod = served["spec"]["template"]["spec"]
    served_claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in served_pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"] in served_claims
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    served_env = {e["name"]: e.get("value") for e in served_pod["containers"][0]["env"]}
    assert env["HONED_HOME"] == served_env["HONED_HOME"] == HONED_HOME
    assert env["HF_HOME"] == served_env["HF_HOME"]


def test_training_pods_run_hardened(tmp_path):
    plan = train_manifests(TrainOptions(_spec(tmp_path), workers=2))
    for pod in (_pod_spec(plan), plan.upload_pod["spec"]):
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["fsGroup"] == RUN_AS
        ctx = pod["containers"][0]["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]} and ctx["runAsUser"] == RUN_AS
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        assert volumes[mounts["/tmp"]]["emptyDir"] == {}
        assert volumes[mounts["/home/honed/.cache"]]["emptyDir"] == {}
    pod = _pod_spec(plan)
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert {v["name"]: v for v in pod["volumes"]}[mounts["/dev/shm"]]["emptyDir"][
        "medium"
    ] == "Memory"
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["HF_HOME"].startswith("/models/")  # the HF cache: on the writable state volume


def test_several_pods_are_a_pytorchjob_valid_against_the_crd(tmp_path):
    plan = train_manifests(TrainOptions(_spec(tmp_path), workers=3, gpus=2))
    validate_manifests(plan.docs)  # PyTorchJob against the vendored CRD schema
    (job,) = _by_kind(plan.docs)["PyTorchJob"]
    assert job["apiVersion"] == "kubeflow.org/v1"
    assert job["spec"]["nprocPerNode"] == "2"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert {r: s["replicas"] for r, s in replicas.items()} == {"Master": 1, "Worker": 2}
    for replica in replicas.values():
        assert replica["restartPolicy"] == "OnFailure"
        (c,) = replica["template"]["spec"]["containers"]
        assert c["name"] == "pytorch"  # the operator's container name
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
        assert c["command"] == training.launch_argv(SPEC_FILE, 2, None)
    assert "elasticPolicy" not in job["spec"]


def test_the_vendored_crd_schema_refuses_a_broken_pytorchjob(tmp_path):
    plan = train_manifests(TrainOptions(_spec(tmp_path), workers=2))
    (job,) = _by_kind(plan.docs)["PyTorchJob"]
    vendored = json.loads(crd_schema_path(job).read_text())
    assert "kubeflow/training-operator" in vendored["source"]
    assert re.search(r"[0-9a-f]{40}", vendored["source"])  # the commit it was taken from
    broken = json.loads(json.dumps(job))
    broken["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "one"
    with pytest.raises(ManifestInvalidError, match="replicas"):
        validate_manifests([broken])
    del broken["spec"]["pytorchReplicaSpecs"]
    with pytest.raises(ManifestInvalidError, match="pytorchReplicaSpecs"):
        validate_manifests([broken])
    typo = json.loads(json.dumps(job))
    typo["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["imag"] = "x"
    with pytest.raises(ManifestInvalidError, match="imag"):  # pod templates checked strictly
        training._check_templates(typo)


def test_paths_already_on_the_data_volume_and_hub_ids_stay(tmp_path):
    spec = _spec(tmp_path, data__source=f"{DATA_MOUNT}/shared/train.jsonl", eval={})
    plan = train_manifests(TrainOptions(spec))
    assert _pod_spec_file(plan)["data"]["source"] == f"{DATA_MOUNT}/shared/train.jsonl"
    assert plan.uploads == []
    spec = _spec(tmp_path, data__source="org/dataset", data__format="hf", eval={})
    spec_hub_model = yaml.safe_load(spec.read_text())
    spec_hub_model["model"]["base"] = "org/model"
    spec.write_text(yaml.safe_dump(spec_hub_model))
    plan = train_manifests(TrainOptions(spec))
    pod_spec = _pod_spec_file(plan)
    assert (pod_spec["data"]["source"], pod_spec["model"]["base"]) == ("org/dataset", "org/model")
    # Nothing on the data volume: no data claim, no data mount.
    assert {p["metadata"]["name"] for p in _by_kind(plan.docs)["PersistentVolumeClaim"]} == {
        "honed-models"
    }
    assert "data" not in {v["name"] for v in _pod_spec(plan)["volumes"]}


@pytest.mark.parametrize(
    ("changes", "named", "hint"),
    [
        ({"data__source": "/srv/corpus/train.jsonl"}, "/srv/corpus/train.jsonl", "kubectl cp"),
        ({"data__source": "../elsewhere/train.jsonl"}, "../elsewhere/train.jsonl", "--data-root"),
        ({"eval": {"golden": "/home/me/golden.jsonl"}}, "eval.golden", "kubectl cp"),
        ({"data__source": "data/missing.jsonl"}, "data/missing.jsonl", "no such file"),
        ({"registry": {"tracking_uri": "sqlite:///me/mlflow.db"}}, "tracking_uri", "state volume"),
    ],
)
def test_paths_no_pod_can_reach_are_refused(tmp_path, changes, named, hint):
    spec = _spec(tmp_path / "proj", **changes)
    with pytest.raises(DeployError) as err:
        train_manifests(TrainOptions(spec))
    assert named in str(err.value) and hint in str(err.value)


def test_any_other_field_naming_a_local_file_is_refused(tmp_path):
    # A field the rewrite does not know (here a task option) that names a file of this
    # machine would silently be missing in the pod.
    spec = _spec(tmp_path, task="seq2seq", task_options={"target_field": "golden.jsonl"})
    spec_data = yaml.safe_load(spec.read_text())
    spec_data["data"].pop("labels")
    spec.write_text(yaml.safe_dump(spec_data))
    with pytest.raises(DeployError, match=r"task_options.target_field: golden.jsonl is a path"):
        train_manifests(TrainOptions(spec))
    spec_data["task_options"]["target_field"] = "summary"  # not a file: fine
    spec_data["loop"] = {"inbox": "data"}  # not read by `honed run`
    spec.write_text(yaml.safe_dump(spec_data))
    train_manifests(TrainOptions(spec))


def test_data_root_widens_the_folder_the_data_volume_mirrors(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "train.jsonl").write_text('{"text": "a", "label": "pos"}\n')
    spec = _spec(tmp_path / "proj", data__source="../shared/train.jsonl")
    plan = train_manifests(TrainOptions(spec, data_root=tmp_path))
    assert _pod_spec_file(plan)["data"]["source"] == f"{DATA_MOUNT}/shared/train.jsonl"
    assert _pod_spec_file(plan)["eval"]["golden"] == f"{DATA_MOUNT}/proj/golden.jsonl"


def test_existing_claims_are_mounted_not_created(tmp_path):
    opts = TrainOptions(
        _spec(tmp_path),
        data=Claim("team-data", create=False),
        state=Claim("team-state", create=False),
    )
    plan = train_manifests(opts)
    assert "PersistentVolumeClaim" not in _by_kind(plan.docs)
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in _pod_spec(plan)["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"team-data", "team-state"}


def _read_dir(out: Path) -> list[dict]:
    return [yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))]


def test_cli_writes_validated_manifests_and_the_upload_steps(tmp_path, capsys):
    spec = _spec(tmp_path / "proj")
    out = tmp_path / "out"
    argv = ["deploy", "train", str(spec), "--out", str(out), "--workers", "2", "--gpus", "1"]
    argv += ["--storage-class", "fast-rwx", "--data-size", "5Gi", "--state-size", "50Gi"]
    assert main(argv) == 0
    docs = _read_dir(out)
    validate_manifests([*docs, yaml.safe_load((out / "upload" / "pod.yaml").read_text())])
    for path in [*out.glob("*.yaml"), out / "upload" / "pod.yaml"]:
        assert not re.search(r"[&*]id\d+", path.read_text()), path.name
    pvcs = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert pvcs["honed-data"]["resources"]["requests"]["storage"] == "5Gi"
    assert pvcs["honed-models"]["resources"]["requests"]["storage"] == "50Gi"
    for pvc in pvcs.values():  # pods on two nodes share them
        assert pvc["storageClassName"] == "fast-rwx" and pvc["accessModes"] == ["ReadWriteMany"]
    assert {d["kind"] for d in docs} == {"ConfigMap", "PyTorchJob", "PersistentVolumeClaim"}
    printed = capsys.readouterr().out
    train_file = tmp_path / "proj" / "data" / "train.jsonl"
    assert f"kubectl cp {train_file} fin-sent-upload:{DATA_MOUNT}/data/train.jsonl" in printed
    assert f"kubectl apply -f {out}" in printed
    assert "honed deploy k8s fin-sent@challenger" in printed and "--existing-claim" in printed


def test_cli_one_pod_with_existing_claims(tmp_path):
    out = tmp_path / "out"
    argv = ["deploy", "train", str(_spec(tmp_path / "proj")), "--out", str(out)]
    argv += ["--existing-data-claim", "d", "--existing-state-claim", "s", "--image-tag", "1.2.3"]
    assert main(argv) == 0
    docs = _read_dir(out)
    assert {d["kind"] for d in docs} == {"ConfigMap", "Job"}
    (job,) = [d for d in docs if d["kind"] == "Job"]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == f"{IMAGE_REPO}:1.2.3"
    with pytest.raises(SystemExit):  # create one or mount one, not both
        main([*argv, "--data-claim", "d2"])


def test_cli_refusal_leaves_nothing_behind(tmp_path, capsys):
    spec = _spec(tmp_path / "proj", data__source=str(tmp_path / "abs.jsonl"))
    out = tmp_path / "out"
    assert main(["deploy", "train", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "abs.jsonl") in err and "kubectl cp" in err and "Traceback" not in err
    assert not out.exists()
    argv = ["deploy", "train", str(_spec(tmp_path / "ok")), "--out", str(out)]
    for bad in (["--workers", "0"], ["--data-size", "lots"], ["--image", "honed:latest"]):
        assert main([*argv, *bad]) == 2, bad
    assert not out.exists()
